//! Priorities of the daemon's background threads, and the machine's idle
//! CPU they may use ([`CpuTimes`]).
//!
//! Contract: [`lower_current_priority`] gives the calling thread a nice
//! value (a higher one than the queue threads' 0) and only that thread (on
//! Linux `setpriority` on a thread id changes that thread; threads it spawns
//! afterwards inherit it). Background work (the tier manager's windows, the
//! prefetcher's inference and training) then yields its CPU to the queue
//! threads and the application whenever they want it, through ordinary CFS
//! weights: nice 19 gets about 1/70 of what a nice-0 thread gets on a
//! contended CPU, yet is never starved outright (the idle class,
//! `SCHED_IDLE`, can starve a thread for as long as the machine is busy).
//! A refusal is returned, for the caller to log; it is never fatal.

/// Set the calling thread's nice value to `nice` (0..=19).
pub fn lower_current_priority(nice: i32) -> std::io::Result<()> {
    assert!((0..=19).contains(&nice), "nice {nice} out of 0..=19");
    // SAFETY: plain syscalls on this thread's own id; no memory is handed over.
    let r = unsafe {
        let tid = libc::gettid() as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice)
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The nice value of thread `tid` of this process, read from `/proc`.
pub fn thread_nice(tid: i32) -> std::io::Result<i32> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))?;
    // Field 19 is the nice value; the command name (field 2) may hold
    // spaces, so count from after its closing parenthesis.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after
        .split_whitespace()
        .nth(16)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no nice value in {stat:?}")))
}

/// CPU time the calling thread has used so far (user and system), from
/// `CLOCK_THREAD_CPUTIME_ID`; zero where the clock cannot be read. Helper
/// threads (the run acceptor's fits) report it so the thread that spawned
/// them can charge their work to its own CPU share.
pub fn thread_cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// The thread id of this process's thread named `name`, if any.
pub fn thread_named(name: &str) -> Option<i32> {
    std::fs::read_dir("/proc/self/task")
        .ok()?
        .flatten()
        .find(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .and_then(|t| t.file_name().to_str()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lowered_thread_reads_back_its_nice_value_and_others_keep_theirs() {
        let main_nice = thread_nice(unsafe_gettid()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::Builder::new()
            .name("nice-probe".into())
            .spawn(move || {
                lower_current_priority(19).unwrap();
                tx.send(()).unwrap();
                done_rx.recv().unwrap();
            })
            .unwrap();
        rx.recv().unwrap();
        let tid = thread_named("nice-probe").expect("the probe thread is listed");
        assert_eq!(thread_nice(tid).unwrap(), 19);
        assert_eq!(thread_nice(unsafe_gettid()).unwrap(), main_nice);
        done_tx.send(()).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn thread_cpu_time_counts_this_threads_work_and_not_its_sleep() {
        let t0 = thread_cpu_time();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let slept = thread_cpu_time() - t0;
        let mut x = 1u64;
        let busy_from = std::time::Instant::now();
        while busy_from.elapsed() < std::time::Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let worked = thread_cpu_time() - t0 - slept;
        assert!(slept < std::time::Duration::from_millis(10), "{slept:?}");
        // Wall 50 ms of spinning; on a loaded CI host the thread may get
        // less than all of it, never none.
        assert!(worked > std::time::Duration::from_millis(5), "{worked:?}");
        // Another thread's work is not this one's.
        let before = thread_cpu_time();
        std::thread::spawn(|| {
            let t = std::time::Instant::now();
            while t.elapsed() < std::time::Duration::from_millis(30) {}
        })
        .join()
        .unwrap();
        assert!(thread_cpu_time() - before < std::time::Duration::from_millis(10));
    }

    fn unsafe_gettid() -> i32 {
        // SAFETY: gettid has no preconditions.
        unsafe { libc::gettid() }
    }
}

/// The machine's CPU time so far, from the `cpu` line of `/proc/stat`
/// (clock ticks summed over the CPUs): idle (idle and iowait) and total
/// (user, nice, system, idle, iowait, irq, softirq, steal), and how many CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    pub idle: u64,
    pub total: u64,
    pub cpus: u32,
}

impl CpuTimes {
    /// Read `/proc/stat` (None where it is missing or unreadable).
    pub fn now() -> Option<CpuTimes> {
        CpuTimes::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// Parse the text of `/proc/stat`.
    pub fn parse(stat: &str) -> Option<CpuTimes> {
        let mut lines = stat.lines();
        let f: Vec<u64> = lines
            .next()?
            .strip_prefix("cpu ")?
            .split_whitespace()
            .take(8)
            .map(|x| x.parse().ok())
            .collect::<Option<_>>()?;
        if f.len() < 5 {
            return None;
        }
        let cpus = lines
            .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
            .count() as u32;
        Some(CpuTimes {
            idle: f[3] + f[4],
            total: f.iter().sum(),
            cpus: cpus.max(1),
        })
    }

    /// Idle CPU between `earlier` and `self`, in percent of one core
    /// (200 on an idle two-CPU machine); None when no time passed.
    pub fn idle_percent_since(&self, earlier: &CpuTimes) -> Option<u32> {
        let total = self.total.checked_sub(earlier.total)?;
        let idle = self.idle.checked_sub(earlier.idle)?.min(total);
        if total == 0 {
            return None;
        }
        Some((idle * 100 * u64::from(self.cpus) / total) as u32)
    }
}

#[cfg(test)]
mod cpu_tests {
    use super::*;

    #[test]
    fn idle_cpu_is_read_in_percent_of_one_core() {
        let a = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\n\
                 cpu1 50 0 25 400 25 0 0 0 0 0\nintr 1 2 3\n";
        let b = "cpu  400 0 100 900 100 0 0 0 0 0\ncpu0 200 0 50 450 50 0 0 0 0 0\n\
                 cpu1 200 0 50 450 50 0 0 0 0 0\nintr 1 2 3\n";
        let (a, b) = (CpuTimes::parse(a).unwrap(), CpuTimes::parse(b).unwrap());
        assert_eq!((a.idle, a.total, a.cpus), (850, 1000, 2));
        // 500 ticks passed on two CPUs, 150 of them idle: 60 % of one core.
        assert_eq!(b.idle_percent_since(&a), Some(60));
        assert_eq!(a.idle_percent_since(&a), None);
        assert_eq!(a.idle_percent_since(&b), None);
        assert!(CpuTimes::parse("intr 1\n").is_none());
        assert!(CpuTimes::parse("cpu  1 2\n").is_none());
        // This machine's own.
        let now = CpuTimes::now().expect("/proc/stat");
        assert!(now.cpus >= 1 && now.idle <= now.total);
    }
}
