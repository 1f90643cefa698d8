//! Architecture-specific code. Only x86_64 exists; everything that executes
//! privileged instructions or touches devices lives below this module.

pub mod x86_64;
