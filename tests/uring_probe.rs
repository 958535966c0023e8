//! The io_uring probe under a real shortage of file descriptors: a probe that fails with
//! EMFILE must say so (not blame the kernel) and must not disable io_uring for the rest
//! of the process. The probe runs once per process, so the check runs in a process of its
//! own: this test binary again, running only the ignored `probe_child`.

mod common;

use std::process::Command;

use swapper::io::IoEngine;
use swapper::{Backend, IoConfig};

const ROLE: &str = "SWAPPER_TEST_PROBE_CHILD";
const OK_LINE: &str = "probe child: ok";

#[test]
fn a_probe_failing_for_lack_of_fds_names_emfile_and_is_retried() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "probe_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(OK_LINE),
        "the probe child failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn uring() -> IoConfig {
    IoConfig {
        backend: Backend::IoUring,
        ..IoConfig::default()
    }
}

#[test]
#[ignore = "run by a_probe_failing_for_lack_of_fds_names_emfile_and_is_retried, in a process of its own"]
fn probe_child() {
    assert_eq!(
        std::env::var(ROLE).as_deref(),
        Ok("1"),
        "run only as the child of a_probe_failing_for_lack_of_fds_names_emfile_and_is_retried"
    );
    let dir = common::disk_dir();
    let path = dir.path().join("f");
    std::fs::write(&path, common::pattern(8192, 1)).unwrap();

    let mut saved = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/dup/close/setrlimit calls on this process.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut saved), 0);
        // The lowest free descriptor: with the soft limit there, every new one is EMFILE.
        let lowest = libc::dup(0);
        assert!(lowest >= 0);
        libc::close(lowest);
        let low = libc::rlimit {
            rlim_cur: lowest as libc::rlim_t,
            rlim_max: saved.rlim_max,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &low), 0);
    }
    let refused = IoEngine::new(uring()).err();
    // The auto backend falls back to blocking calls, which need no descriptor to start.
    let auto = IoEngine::new(IoConfig::default()).map(|e| e.backend());
    // SAFETY: restores the limit read above.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &saved) }, 0);

    let e = refused.expect("io_uring was created although no file descriptor was left");
    assert!(
        e.message().contains("errno 24") && e.message().contains("Too many open files"),
        "the message does not name EMFILE: {e}"
    );
    assert_eq!(auto.unwrap(), Backend::Blocking);

    // With descriptors again, io_uring works in the same process.
    let engine =
        IoEngine::new(uring()).unwrap_or_else(|e| panic!("io_uring stays disabled after EMFILE: {e}"));
    assert_eq!(engine.backend(), Backend::IoUring);
    let mut buf = vec![0u8; 8192];
    engine.read(&mut buf, &path, 0).unwrap();
    assert!(buf == common::pattern(8192, 1));
    println!("{OK_LINE}");
}
