//! A report on the standard error (the journal, under systemd) when the process dies of a fatal
//! signal: which signal, the faulting address, the thread's name (GStreamer and CUDA name
//! theirs) and a native backtrace whose frames name their module and offset (glibc's
//! `backtrace_symbols_fd`, which writes without allocating), so that a crash inside a native
//! library — GStreamer, the CUDA driver, ONNX Runtime — says where it was. Symbolize a frame of
//! a stripped binary with `addr2line -e <unstripped vigil> <offset>`.
//!
//! After the report the signal's previous disposition is put back and the signal delivered again
//! (a fault re-executes; a sent or raised signal is raised anew), so the process still dies as it
//! would have: Rust's stack-overflow message where that was the cause, the exit status and a
//! core dump where the system keeps them (checked with a stack overflow, in the main thread and
//! in a spawned one: the report, Rust's "has overflowed its stack", then SIGABRT as without the
//! report). One backtrace per process: a signal after a report (that abort) writes one line.
//! Limits: the report of a fault in a Rust thread runs on Rust's small alternate signal stack
//! (8 KiB or more): it fits on x86-64 (the test below), but a deeper unwinder could overflow
//! it, and the process then dies of SIGSEGV without Rust's message; a stack overflow in a thread
//! started by a C library (GStreamer, ONNX Runtime, CUDA), which has no alternate stack, gets no
//! report. A SIGSEGV *sent* by another process now kills at once (Rust's own handler let the
//! first one pass). Only glibc has `backtrace(3)`: elsewhere [`install`] does nothing.

/// The signals reported.
const FATAL: [libc::c_int; 5] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGABRT,
];

/// Installs the report for [`FATAL`] signals; later calls do nothing. Call it first thing in
/// `main`, before GStreamer is initialised: it also turns off GStreamer's "segtrap" (a SIGSEGV
/// handler of its own that it may install while loading plugins in-process, meant to be turned
/// off by applications with their own), so that a crash there reaches this report.
pub fn install() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if imp::install() {
        gstreamer::segtrap_set_enabled(false);
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    use super::FATAL;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Set by the first report.
    static REPORTED: AtomicBool = AtomicBool::new(false);

    // SAFETY: the declarations are glibc's own, from <execinfo.h> (the libc crate does not
    // declare them): `int backtrace(void **, int)` and `void backtrace_symbols_fd(void *const *,
    // int, int)`, in libc.so.6, which every glibc build links.
    unsafe extern "C" {
        fn backtrace(buffer: *mut *mut libc::c_void, size: libc::c_int) -> libc::c_int;
        fn backtrace_symbols_fd(
            buffer: *const *mut libc::c_void,
            size: libc::c_int,
            fd: libc::c_int,
        );
    }

    /// Each signal's disposition before ours, set once before any handler is installed (plain
    /// data: handler addresses, flags, masks).
    struct Previous([libc::sigaction; FATAL.len()]);
    static PREVIOUS: OnceLock<Previous> = OnceLock::new();

    /// True on the first call, which installed the handlers.
    pub(super) fn install() -> bool {
        let mut prev = Previous(
            // SAFETY: an all-zero sigaction is a valid value (SIG_DFL, empty mask, no flags).
            [unsafe { std::mem::zeroed::<libc::sigaction>() }; FATAL.len()],
        );
        for (i, &sig) in FATAL.iter().enumerate() {
            // SAFETY: a null new action only reads the current one into a valid struct.
            unsafe { libc::sigaction(sig, std::ptr::null(), &mut prev.0[i]) };
        }
        if PREVIOUS.set(prev).is_err() {
            return false;
        }
        // glibc's backtrace loads libgcc_s (allocating) on its first call: done here, not in
        // the handler.
        let mut warm = [std::ptr::null_mut(); 4];
        // SAFETY: the buffer holds the 4 entries asked for.
        unsafe { backtrace(warm.as_mut_ptr(), warm.len() as libc::c_int) };
        for sig in FATAL {
            // SAFETY: zeroed is a valid sigaction; the fields set below make it our handler.
            let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
            act.sa_sigaction = on_fatal as *const () as usize;
            // SA_ONSTACK: Rust's threads have an alternate stack, where a stack overflow can
            // still be reported; SA_SIGINFO: the handler takes the fault's address.
            act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            // SAFETY: `act` is a valid action whose handler has the SA_SIGINFO signature.
            unsafe {
                libc::sigemptyset(&mut act.sa_mask);
                libc::sigaction(sig, &act, std::ptr::null_mut());
            }
        }
        true
    }

    /// Writes `s` to the standard error, ignoring failures (nothing else can be done here).
    fn put(s: &[u8]) {
        // SAFETY: write(2) reads `s.len()` bytes of a live slice; async-signal-safe.
        unsafe { libc::write(2, s.as_ptr().cast(), s.len()) };
    }

    /// Writes `v` in base `radix` (10 or 16, lower-case digits) without allocating.
    fn put_num(v: u64, radix: u64) {
        // 20 digits hold u64::MAX in decimal, 16 in hexadecimal.
        let mut buf = [0u8; 20];
        let mut i = buf.len();
        let mut v = v;
        loop {
            i -= 1;
            buf[i] = b"0123456789abcdef"[(v % radix) as usize];
            v /= radix;
            if v == 0 {
                break;
            }
        }
        put(&buf[i..]);
    }

    fn name(sig: libc::c_int) -> &'static [u8] {
        match sig {
            libc::SIGSEGV => b"SIGSEGV",
            libc::SIGBUS => b"SIGBUS",
            libc::SIGILL => b"SIGILL",
            libc::SIGFPE => b"SIGFPE",
            libc::SIGABRT => b"SIGABRT",
            _ => b"signal",
        }
    }

    /// The handler: async-signal-safe calls (write, prctl, getpid, sigaction, raise), and
    /// glibc's backtrace, which its manual does not list as such (its first call loads libgcc_s,
    /// done at install): a best effort in a process that is dying anyway.
    extern "C" fn on_fatal(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
        put(b"\nvigil: fatal ");
        put(name(sig));
        // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
        let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
        // A fault has si_code > 0; a signal from user space has one <= 0: kill(2) SI_USER,
        // sigqueue(3) SI_QUEUE, tgkill(2) and raise(3) SI_TKILL (which fill si_pid), or another.
        let sent = code <= 0;
        if matches!(code, libc::SI_USER | libc::SI_QUEUE | libc::SI_TKILL) {
            // SAFETY: these codes fill si_pid; getpid(2) is async-signal-safe.
            let (from, me) = unsafe { ((*info).si_pid(), libc::getpid()) };
            if from == me {
                put(b" (raised by this process: abort or raise)");
            } else {
                put(b" (sent by process ");
                put_num(from as u64, 10);
                put(b")");
            }
        } else if sent {
            put(b" (sent from user space, si_code ");
            put_num(u64::from(code.unsigned_abs()), 10);
            put(b" below 0)");
        } else {
            put(b" at address 0x");
            put_num(addr as u64, 16);
        }
        // One backtrace per process: a signal that follows a report (Rust's stack-overflow
        // handler aborts after the fault was reported, on the same alternate stack, which a
        // second unwinding could overflow) only says so.
        if REPORTED.swap(true, Ordering::SeqCst) {
            put(b", after the report above\n");
        } else {
            report();
        }
        finish(sig, sent);
    }

    /// The thread's name and the backtrace.
    fn report() {
        let mut thread = [0u8; 17];
        // SAFETY: PR_GET_NAME writes at most 16 bytes, its NUL included, into the buffer.
        unsafe { libc::prctl(libc::PR_GET_NAME, thread.as_mut_ptr()) };
        let len = thread.iter().position(|&b| b == 0).unwrap_or(16);
        put(b" in thread \"");
        put(&thread[..len]);
        put(b"\"; backtrace (module(+offset) [address]):\n");
        let mut frames = [std::ptr::null_mut(); 64];
        // SAFETY: the buffer holds the 64 entries asked for; backtrace was called once at
        // install, so it does not load libgcc_s here.
        let n = unsafe { backtrace(frames.as_mut_ptr(), frames.len() as libc::c_int) };
        // SAFETY: `frames[..n]` were filled by backtrace; the _fd variant does not allocate.
        unsafe { backtrace_symbols_fd(frames.as_ptr(), n, 2) };
        put(b"vigil: end of the report\n");
    }

    /// The death the signal would have brought.
    fn finish(sig: libc::c_int, sent: bool) {
        if sent || sig == libc::SIGABRT {
            // Not a fault that re-executes on return: the default action (death, core), raised
            // again and delivered once this handler returns (the signal is blocked while it
            // runs). Not the previous handler: Rust's, for one, expects a fault to re-execute.
            // SAFETY: a zeroed sigaction is SIG_DFL; sigaction(2) and raise(3) are
            // async-signal-safe.
            unsafe {
                let dfl: libc::sigaction = std::mem::zeroed();
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
                libc::raise(sig);
            }
        } else if let Some(prev) = PREVIOUS.get()
            && let Some(i) = FATAL.iter().position(|&s| s == sig)
        {
            // A fault: the instruction runs again on return and faults again, into the previous
            // handler (Rust's reports a stack overflow; else it resets to the default action).
            // SAFETY: `prev.0[i]` is the disposition read for this signal at install.
            unsafe { libc::sigaction(sig, &prev.0[i], std::ptr::null_mut()) };
        }
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    /// Recursion that no optimisation turns into a loop: a page of stack per call, used after
    /// the call returns.
    fn deep(n: u64) -> u64 {
        let local = std::hint::black_box([n as u8; 4096]);
        if n == u64::MAX {
            return 0;
        }
        deep(n + 1) + u64::from(local[7])
    }

    /// Run again as a child process (this test binary, this test only), which installs the
    /// report and overflows a thread's stack: the report, then Rust's own message and its abort,
    /// as without the report; one backtrace.
    #[test]
    fn a_stack_overflow_is_reported_then_dies_as_before() {
        if std::env::var_os("VIGIL_CRASH_CHILD").is_some() {
            super::install();
            let _ = std::thread::spawn(|| deep(0)).join();
            unreachable!("the stack overflowed");
        }
        // Through sh for `ulimit -c 0`: the child's death leaves no core file behind.
        let out = std::process::Command::new("sh")
            .args(["-c", "ulimit -c 0 && exec \"$0\" \"$@\""])
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "ffi::crash::tests::a_stack_overflow_is_reported_then_dies_as_before",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("VIGIL_CRASH_CHILD", "1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{err}");
        assert!(err.contains("vigil: fatal SIGSEGV at address 0x"), "{err}");
        assert!(err.contains("vigil: end of the report"), "{err}");
        assert!(err.contains("has overflowed its stack"), "{err}");
        assert!(
            err.contains("vigil: fatal SIGABRT (raised by this process: abort or raise), after the report above"),
            "{err}"
        );
        assert_eq!(err.matches("backtrace (module").count(), 1, "{err}");
    }
}
