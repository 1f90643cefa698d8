//! The CMOS real-time clock (Linux `arch/x86/kernel/rtc.c`), read once at
//! boot so `CLOCK_REALTIME` has a wall-clock origin.

use x86_64::instructions::port::Port;

const CMOS_ADDR: u16 = 0x70;
const CMOS_DATA: u16 = 0x71;

fn read_reg(reg: u8) -> u8 {
    // SAFETY: the CMOS index/data ports; bit 7 of the index keeps NMIs enabled
    // as they were (0), and reading a clock register has no side effects.
    unsafe {
        Port::<u8>::new(CMOS_ADDR).write(reg);
        Port::<u8>::new(CMOS_DATA).read()
    }
}

fn update_in_progress() -> bool {
    read_reg(0x0A) & 0x80 != 0
}

/// Seconds since the Unix epoch according to the RTC (UTC assumed, as QEMU
/// provides by default), or `None` if the values make no sense.
pub fn read_unix_time() -> Option<u64> {
    let read_all = || {
        while update_in_progress() {
            core::hint::spin_loop();
        }
        [0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32].map(read_reg)
    };
    // Read until two consecutive reads agree (no update in between).
    let mut regs = read_all();
    for _ in 0..5 {
        let again = read_all();
        if again == regs {
            break;
        }
        regs = again;
    }
    let status_b = read_reg(0x0B);
    let bcd = status_b & 0x04 == 0;
    let conv = |v: u8| if bcd { (v & 0x0F) as u64 + ((v >> 4) as u64) * 10 } else { v as u64 };
    let [sec, min, hour_raw, day, month, year, century] = regs;
    let mut hour = conv(hour_raw & 0x7F);
    if status_b & 0x02 == 0 {
        // 12-hour mode: 12 AM is hour 0, PM adds 12.
        hour = hour % 12 + if hour_raw & 0x80 != 0 { 12 } else { 0 };
    }
    let century = match conv(century) {
        c @ 19..=21 => c,
        _ => 20,
    };
    let (sec, min, day, month) = (conv(sec), conv(min), conv(day), conv(month));
    let year = century * 100 + conv(year);
    if sec > 59 || min > 59 || hour > 23 || !(1..=31).contains(&day) || !(1..=12).contains(&month) || year < 1970 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86400 + hour * 3600 + min * 60 + sec)
}

/// Days since 1970-01-01 (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub const KTESTS: &[crate::lib::ktest::KTest] = &[crate::ktest!(rtc_date_arithmetic_matches_known_dates)];

fn rtc_date_arithmetic_matches_known_dates() -> crate::lib::ktest::KResult {
    crate::kassert_eq!(days_from_civil(1970, 1, 1), 0);
    crate::kassert_eq!(days_from_civil(2000, 3, 1), 11_017);
    crate::kassert_eq!(days_from_civil(2026, 11, 22), 20_779);
    crate::kassert!(read_unix_time().is_some_and(|t| t > 1_577_836_800), "RTC reads before 2020");
    Ok(())
}
