//! `boot`: boot the kernel in QEMU (see `boot --help`).

fn main() {
    let options = match boot::parse_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("boot: {}\n", msg);
            }
            eprintln!("{}", boot::USAGE);
            std::process::exit(if msg.is_empty() { 0 } else { 64 });
        }
    };
    if options.mmbench {
        std::process::exit(boot::mmbench::main(&options));
    }
    if options.linux {
        match boot::linux::Peer::find() {
            Ok(peer) => eprintln!("linux peer: {}", peer.describe()),
            Err(e) => {
                eprintln!("boot: {}", e);
                std::process::exit(3);
            }
        }
        if boot::mem_mib(&options.mem).is_some_and(|mib| mib <= 512) {
            eprintln!("boot: note: Linux turns THP off with less than 512 MiB of RAM; use --mem 1G when huge pages matter");
        }
    }
    if options.gdb {
        eprintln!("boot: waiting for gdb on localhost:1234 (kernel ELF: {})", env!("KERNEL_ELF"));
    }
    let run = match boot::run(&options, options.exec_script(), boot::Echo::Stdout) {
        Ok(run) => run,
        Err(e) => {
            eprintln!("boot: {}", e);
            std::process::exit(3);
        }
    };
    if options.profile.is_some() {
        profile_report(&options, &run);
    }
    match &run.outcome {
        boot::Outcome::Success => {}
        boot::Outcome::Failure => eprintln!("boot: the kernel reported failure"),
        boot::Outcome::Timeout => {
            eprintln!(
                "boot: timeout after {} s: the kernel hung. Last serial lines:",
                run.elapsed.as_secs()
            );
            for line in run.tail(boot::TAIL_LINES) {
                eprintln!("  | {}", line);
            }
        }
        boot::Outcome::Crashed(code) => eprintln!(
            "boot: QEMU exited with status {:?} without the kernel's exit code (triple fault or QEMU error)",
            code
        ),
    }
    // A kernel that ran a user init reports its status: that is ours then.
    std::process::exit(run.exit_status());
}

/// `--profile`: the top functions and the flame graph from the kernel's dump.
fn profile_report(options: &boot::Options, run: &boot::Run) {
    let svg = options.profile_svg();
    let what = match (&options.init, &options.ktest) {
        (Some(init), _) => format!("init={}", init),
        (None, Some(Some(filter))) => format!("ktest={}", filter),
        (None, Some(None)) => "ktest".into(),
        (None, None) => "boot".into(),
    };
    let title = format!("mm kernel: {}{}", what, if options.icount { " (--icount)" } else { "" });
    match boot::profile::report(&run.output, std::path::Path::new(boot::KERNEL_ELF), &svg, &title) {
        Ok(report) => {
            print!("{}", report.top_text(boot::profile::TOP_FUNCTIONS));
            println!("flame graph: {} (folded stacks: {})", svg.display(), boot::profile::folded_path(&svg).display());
        }
        Err(e) => eprintln!("boot: --profile: {}", e),
    }
}
