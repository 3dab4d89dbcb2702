//! Readings of a process from `/proc`, for the benches that measure the product as it runs.

use std::time::Duration;

/// Clock ticks per second of `/proc/*/stat` (Linux's USER_HZ, 100 on every common architecture).
const USER_HZ: u64 = 100;

/// A `kB` field of `/proc/{pid}/status` (`VmRSS`, `VmHWM`, `RssAnon`, ...) in bytes; `pid` may be
/// `self`. 0 when the process or the field is gone.
pub fn status_bytes(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// User plus system CPU time of a process (`/proc/{pid}/stat`); `pid` may be `self`.
pub fn cpu_time(pid: &str) -> Duration {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the parenthesised command name start at field 3 (state); utime and
            // stime are fields 14 and 15.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 1000 / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_resident_set_and_no_such_field() {
        assert!(status_bytes("self", "VmRSS") > 0);
        assert_eq!(status_bytes("self", "NoSuchField"), 0);
        assert_eq!(cpu_time("no-such-pid"), Duration::ZERO);
    }
}
