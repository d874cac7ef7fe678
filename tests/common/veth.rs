//! Another host for tests that need one: a network namespace joined to the root namespace by
//! a veth pair, with addresses on both sides, deleted on drop; and `sh`, the command runner
//! that shows a failing command's stderr.

use std::process::Command;

/// Runs a command, returning whether it succeeded (stderr shown on failure).
pub fn sh(args: &[&str]) -> bool {
    match Command::new(args[0]).args(&args[1..]).output() {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            eprintln!("{args:?}: {}", String::from_utf8_lossy(&o.stderr).trim());
            false
        }
        Err(e) => {
            eprintln!("{args:?}: {e}");
            false
        }
    }
}

/// A namespace behind a veth pair; the namespace and the pair are deleted on drop.
pub struct VethHost {
    pub ns: String,
    pub root_if: String,
}

impl VethHost {
    /// Namespace `ns` with the pair `root_if` (root side, `root_addr`) / `ns_if` (inside, every
    /// one of `ns_addrs`), both up, and the namespace's loopback up. A leftover namespace of
    /// the same name is deleted first. None when any step fails (not root).
    pub fn new(
        ns: &str,
        root_if: &str,
        ns_if: &str,
        root_addr: &str,
        ns_addrs: &[&str],
    ) -> Option<VethHost> {
        let h = VethHost {
            ns: ns.to_string(),
            root_if: root_if.to_string(),
        };
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
        if !sh(&["ip", "netns", "add", ns]) {
            return None;
        }
        let in_ns = |args: &[&str]| {
            let mut a = vec!["ip", "netns", "exec", ns];
            a.extend_from_slice(args);
            sh(&a)
        };
        let ok = sh(&[
            "ip", "link", "add", root_if, "type", "veth", "peer", "name", ns_if,
        ]) && sh(&["ip", "link", "set", ns_if, "netns", ns])
            && sh(&["ip", "addr", "add", root_addr, "dev", root_if])
            && sh(&["ip", "link", "set", root_if, "up"])
            && ns_addrs
                .iter()
                .all(|a| in_ns(&["ip", "addr", "add", a, "dev", ns_if]))
            && in_ns(&["ip", "link", "set", ns_if, "up"])
            && in_ns(&["ip", "link", "set", "lo", "up"]);
        ok.then_some(h)
    }
}

impl VethHost {
    /// Runs the future `make()` builds on a thread of its own that first joins the namespace
    /// (sockets made there live inside), on a current-thread runtime.
    pub fn block_on_inside<F, Fut>(&self, make: F) -> std::thread::JoinHandle<Fut::Output>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future,
        Fut::Output: Send + 'static,
    {
        use std::os::fd::AsRawFd;
        let ns_path = format!("/var/run/netns/{}", self.ns);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&ns_path).unwrap();
            // SAFETY: setns on this thread only, with a namespace descriptor we hold open.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(make())
        })
    }
}

impl Drop for VethHost {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end, and so the pair.
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.root_if])
            .output();
    }
}
