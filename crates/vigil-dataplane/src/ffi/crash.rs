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
//! core dump where the system keeps them. Only glibc has `backtrace(3)`: elsewhere
//! [`install`] does nothing.

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

    unsafe extern "C" {
        // glibc's <execinfo.h>; the libc crate does not declare them.
        fn backtrace(buffer: *mut *mut libc::c_void, size: libc::c_int) -> libc::c_int;
        fn backtrace_symbols_fd(
            buffer: *const *mut libc::c_void,
            size: libc::c_int,
            fd: libc::c_int,
        );
    }

    /// Each signal's disposition before ours, set once before any handler is installed.
    struct Previous([libc::sigaction; FATAL.len()]);
    // SAFETY: plain data (handler addresses, flags, masks) written once before the handlers
    // that read it are installed, never written again.
    unsafe impl Sync for Previous {}
    // SAFETY: as above: plain data, no pointer into anything a thread owns.
    unsafe impl Send for Previous {}
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

    /// Writes `v` in hexadecimal without allocating.
    fn put_hex(v: usize) {
        let mut buf = [0u8; 18];
        let mut i = buf.len();
        let mut v = v;
        loop {
            i -= 1;
            buf[i] = b"0123456789abcdef"[v & 0xf];
            v >>= 4;
            if v == 0 {
                break;
            }
        }
        i -= 2;
        buf[i..i + 2].copy_from_slice(b"0x");
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

    /// The handler: only async-signal-safe calls (write, prctl, sigaction, raise, and glibc's
    /// backtrace after its first call).
    extern "C" fn on_fatal(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
        put(b"\nvigil: fatal ");
        put(name(sig));
        // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
        let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
        // A fault has si_code > 0; kill(2), tgkill(2) and raise(3) give SI_USER/SI_TKILL (<= 0).
        let sent = code <= 0;
        if sent {
            put(b" (sent by a process)");
        } else {
            put(b" at address ");
            put_hex(addr);
        }
        let mut thread = [0u8; 17];
        // SAFETY: PR_GET_NAME writes at most 16 bytes and a NUL into the 17-byte buffer.
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
