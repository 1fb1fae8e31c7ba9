//! The build sandbox: what the lifecycle (and the tool's build code it
//! runs) can see and be. A build reads and writes only its workspace
//! (`/workspace`), its tool's cache for the image (`/cache`) and its own
//! `/tmp`, and reads the lifecycle, buildpacks and order file (`/cnb/...`),
//! `/usr` and the few files of `/etc` programs need. The data dir, other
//! tools' caches, other builds and berth's processes do not exist in it.
//!
//! Mechanism: bubblewrap (`bwrap`, Debian package `bubblewrap`) with new
//! mount, pid, ipc, uts and (where possible) cgroup namespaces, a fresh
//! `/proc` and `/dev`, `--die-with-parent` and `--new-session`; the network
//! is shared (the lifecycle pushes to berth; egress filtering belongs to
//! the host firewall, which can match the builds' uids).
//!
//! - berth as root: bwrap runs privileged (no user namespace: with one,
//!   root would map to host root), so it mounts as root and nothing in the
//!   sandbox walks the host path (a data dir under a 0700 parent works);
//!   then `setpriv` drops to the tool's own uid/gid ([`Identity`]), clears
//!   supplementary groups and every capability, and sets no_new_privs.
//! - berth as another user: bwrap runs unprivileged with a user namespace
//!   (and `--disable-userns` inside); every build runs as berth's uid and
//!   relies on the mount namespace alone.
//!
//! The environment is exactly what berth gives (the build's token travels
//! in it, never on a command line, where `ps` would show it).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

/// Where a build's parts are inside the sandbox.
pub const WORKSPACE: &str = "/workspace";
pub const CACHE: &str = "/cache";
pub const LIFECYCLE: &str = "/cnb/lifecycle";
pub const BUILDPACKS: &str = "/cnb/buildpacks";
pub const ORDER: &str = "/cnb/order.toml";
/// Where `[builds] registry_ca` is mounted (as `ca.crt`), read-only.
pub const REGISTRY_CA_DIR: &str = "/cnb/registry-ca";
/// `SSL_CERT_DIR` for a build when the registry's CA is given: Go's
/// crypto/x509 (the lifecycle, through go-containerregistry) then trusts
/// the system roots (its default bundle files, still read) plus every
/// certificate in these directories.
pub const SSL_CERT_DIR: &str = "/etc/ssl/certs:/cnb/registry-ca";

/// The `[builds] sandbox` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxKind {
    /// bubblewrap (the default).
    Bwrap,
    /// The lifecycle runs as berth's own user with the host's view: only
    /// for a trusted, single-user setup.
    None,
}

/// Who a build runs as on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

impl Identity {
    /// berth's own effective uid and gid.
    pub fn berth() -> Identity {
        // SAFETY: geteuid/getegid have no preconditions and cannot fail.
        unsafe {
            Identity {
                uid: libc::geteuid(),
                gid: libc::getegid(),
            }
        }
    }
}

/// Whether berth runs as root (and so can give each tool its own uid).
pub fn is_root() -> bool {
    Identity::berth().uid == 0
}

/// The host paths one build's sandbox is made of.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Read-write at `/workspace`.
    pub workspace: PathBuf,
    /// Read-write at `/cache`.
    pub cache: PathBuf,
    /// Read-write at `/tmp` (on disk, removed with the workspace).
    pub tmp: PathBuf,
    /// Read-only at `/etc/passwd` and `/etc/group`: the host's entries
    /// plus one for the build's user.
    pub passwd: PathBuf,
    pub group: PathBuf,
    /// Read-only at `/cnb/lifecycle`, `/cnb/buildpacks`, `/cnb/order.toml`.
    pub lifecycle_dir: PathBuf,
    pub buildpacks_dir: PathBuf,
    pub order: PathBuf,
    /// Read-only at `/cnb/registry-ca/ca.crt`: the CA the registry's TLS
    /// certificate chains to, when it is not a public one.
    pub registry_ca: Option<PathBuf>,
}

/// Files and directories of the host's `/etc` a build may read: name
/// resolution, TLS roots, the dynamic loader, alternatives (Debian's
/// `/usr/bin` links point into it), time zone. Not shadow, not ssl/private.
const ETC: &[&str] = &[
    "resolv.conf",
    "hosts",
    "host.conf",
    "nsswitch.conf",
    "gai.conf",
    "services",
    "protocols",
    "ssl/certs",
    "ssl/openssl.cnf",
    "ca-certificates",
    "ca-certificates.conf",
    "pki/tls/certs",
    "pki/ca-trust/extracted",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "localtime",
    "timezone",
    "mime.types",
    "os-release",
    "debian_version",
];

/// Top-level entries that hold programs and libraries besides `/usr`:
/// mirrored as the host has them (a symlink into /usr on merged-/usr
/// systems, else a read-only bind).
const ROOT_DIRS: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

#[derive(Debug, Clone, PartialEq, Eq)]
enum RootEntry {
    Symlink(PathBuf),
    Dir,
}

/// bubblewrap, found and ready to wrap commands.
#[derive(Debug, Clone)]
pub struct Bwrap {
    bwrap: PathBuf,
    /// Set when berth is root: drops to the build's uid inside.
    setpriv: Option<PathBuf>,
    root: Vec<(String, RootEntry)>,
}

/// Finds `name` in berth's PATH (the usual system directories when PATH
/// is not set).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| {
                    m.is_file()
                        && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
                })
                .unwrap_or(false)
        })
}

impl Bwrap {
    /// Finds bwrap (and setpriv when berth is root), or says exactly what
    /// is missing.
    pub fn find() -> Result<Bwrap, String> {
        let bwrap = which("bwrap").ok_or(
            "bubblewrap (bwrap) is not installed: install the Debian package `bubblewrap`, or set [builds] sandbox = \"none\" on a trusted single-user host",
        )?;
        let root: Vec<(String, RootEntry)> = ROOT_DIRS
            .iter()
            .filter_map(|d| {
                let p = Path::new("/").join(d);
                let meta = std::fs::symlink_metadata(&p).ok()?;
                if meta.file_type().is_symlink() {
                    Some((
                        d.to_string(),
                        RootEntry::Symlink(std::fs::read_link(&p).ok()?),
                    ))
                } else if meta.is_dir() {
                    Some((d.to_string(), RootEntry::Dir))
                } else {
                    None
                }
            })
            .collect();
        let setpriv = if is_root() {
            let found = which("setpriv").ok_or(
                "setpriv is not installed (berth runs as root and drops each build to its tool's uid with it): install the Debian package `util-linux`",
            )?;
            // It runs inside the sandbox: it must be under /usr or a
            // directory that is bound there.
            let real = std::fs::canonicalize(&found)
                .map_err(|e| format!("cannot resolve {}: {e}", found.display()))?;
            let visible = real.starts_with("/usr")
                || root
                    .iter()
                    .any(|(d, e)| *e == RootEntry::Dir && real.starts_with(Path::new("/").join(d)));
            if !visible {
                return Err(format!(
                    "setpriv is at {}, outside /usr, so builds cannot run it",
                    real.display()
                ));
            }
            Some(real)
        } else {
            None
        };
        Ok(Bwrap {
            bwrap,
            setpriv,
            root,
        })
    }

    /// The namespaces and the system part of the tree (no build parts).
    fn base_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
        push(&[
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
        ]);
        if self.setpriv.is_none() {
            push(&["--unshare-user", "--disable-userns"]);
        }
        push(&[
            "--die-with-parent",
            "--new-session",
            "--hostname",
            "berth-build",
            "--ro-bind",
            "/usr",
            "/usr",
        ]);
        for (name, entry) in &self.root {
            let inside = format!("/{name}");
            match entry {
                RootEntry::Symlink(target) => {
                    a.push("--symlink".into());
                    a.push(target.into());
                    a.push(inside.into());
                }
                RootEntry::Dir => {
                    a.extend(["--ro-bind".into(), inside.clone().into(), inside.into()]);
                }
            }
        }
        a.extend(["--perms", "0755", "--dir", "/etc"].map(OsString::from));
        for f in ETC {
            let p = format!("/etc/{f}");
            a.extend(["--ro-bind-try".into(), p.clone().into(), p.into()]);
        }
        a.extend(["--proc", "/proc", "--dev", "/dev"].map(OsString::from));
        // A small shared-memory tmpfs (POSIX semaphores, multiprocessing).
        a.extend(
            [
                "--perms", "01777", "--size", "67108864", "--tmpfs", "/dev/shm",
            ]
            .map(OsString::from),
        );
        a
    }

    /// The part after bwrap's own arguments: `--` and, as root, setpriv
    /// dropping to `id` with no capabilities and no way to regain any.
    fn drop_to(&self, id: Identity) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["--".into()];
        if let Some(setpriv) = &self.setpriv {
            a.push(setpriv.into());
            a.extend(
                [
                    "--reuid".to_owned(),
                    id.uid.to_string(),
                    "--regid".into(),
                    id.gid.to_string(),
                    "--clear-groups".into(),
                    "--inh-caps=-all".into(),
                    "--ambient-caps=-all".into(),
                    "--bounding-set=-all".into(),
                    "--no-new-privs".into(),
                    "--".into(),
                ]
                .map(OsString::from),
            );
        }
        a
    }

    /// `program args` inside the sandbox made of `layout`, as `id`, with
    /// exactly the environment `env` (plus PATH, HOME and LANG).
    pub fn command(
        &self,
        layout: &Layout,
        id: Identity,
        env: &[(&str, &str)],
        program: &str,
        args: &[OsString],
    ) -> Command {
        let mut a = self.base_args();
        // bwrap makes missing parents 0700 (root's, as root): /cnb must
        // be traversable by the build's user.
        a.extend(["--perms", "0755", "--dir", "/cnb"].map(OsString::from));
        let mut bind = |flag: &str, src: &Path, dest: &str| {
            a.extend([flag.into(), src.into(), dest.into()]);
        };
        bind("--ro-bind", &layout.passwd, "/etc/passwd");
        bind("--ro-bind", &layout.group, "/etc/group");
        bind("--bind", &layout.tmp, "/tmp");
        bind("--ro-bind", &layout.lifecycle_dir, LIFECYCLE);
        bind("--ro-bind-try", &layout.buildpacks_dir, BUILDPACKS);
        bind("--ro-bind-try", &layout.order, ORDER);
        bind("--bind", &layout.workspace, WORKSPACE);
        bind("--bind", &layout.cache, CACHE);
        if let Some(ca) = &layout.registry_ca {
            a.extend(["--perms", "0755", "--dir", REGISTRY_CA_DIR].map(OsString::from));
            a.extend([
                "--ro-bind".into(),
                ca.into(),
                format!("{REGISTRY_CA_DIR}/ca.crt").into(),
            ]);
        }
        a.extend(["--remount-ro", "/", "--chdir", WORKSPACE].map(OsString::from));
        a.extend(self.drop_to(id));
        a.push(program.into());
        a.extend(args.iter().cloned());
        let mut cmd = Command::new(&self.bwrap);
        cmd.args(a);
        sandbox_env(&mut cmd, env);
        cmd
    }

    /// Runs a trivial command in a sandbox like a build's, as `id`, to
    /// learn at start-up whether sandboxes can be made on this host.
    pub async fn probe(&self, id: Identity) -> Result<(), String> {
        let mut a = self.base_args();
        a.extend(["--remount-ro", "/"].map(OsString::from));
        a.extend(self.drop_to(id));
        a.extend(["/bin/sh", "-c", "exit 0"].map(OsString::from));
        let mut cmd = Command::new(&self.bwrap);
        cmd.args(a)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        sandbox_env(&mut cmd, &[]);
        let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
            .await
            .map_err(|_| "bwrap did not finish a trivial sandbox within 20 s".to_owned())?
            .map_err(|e| format!("cannot run {}: {e}", self.bwrap.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "bwrap cannot create a sandbox on this host ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

/// A sandboxed process's environment: nothing of berth's, only `env` and
/// the basics; umask 022 (berth's is 077) so what the build writes is
/// readable in the image it becomes.
fn sandbox_env(cmd: &mut Command, env: &[(&str, &str)]) {
    cmd.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", "/tmp")
        .env("LANG", "C.UTF-8");
    for (k, v) in env {
        cmd.env(k, v);
    }
    // SAFETY: umask is async-signal-safe and cannot fail.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        });
    }
}

/// The `/etc/passwd` and `/etc/group` a build sees: the host's, plus an
/// entry for the build's user (so tools that look their user up work).
pub fn identity_files(id: Identity) -> (String, String) {
    let host = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let mut passwd = host("/etc/passwd");
    let mut group = host("/etc/group");
    let has = |text: &str, n: u32| {
        text.lines()
            .any(|l| l.split(':').nth(2) == Some(n.to_string().as_str()))
    };
    if !passwd.is_empty() && !passwd.ends_with('\n') {
        passwd.push('\n');
    }
    if !group.is_empty() && !group.ends_with('\n') {
        group.push('\n');
    }
    if !has(&passwd, id.uid) {
        passwd.push_str(&format!(
            "cnb:x:{}:{}:build user:/tmp:/usr/sbin/nologin\n",
            id.uid, id.gid
        ));
    }
    if !has(&group, id.gid) {
        group.push_str(&format!("cnb:x:{}:\n", id.gid));
    }
    (passwd, group)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn argv(cmd: &Command) -> String {
        crate::test_util::argv(cmd).join(" ")
    }

    fn layout(base: &Path) -> Layout {
        let d = |n: &str| {
            let p = base.join(n);
            std::fs::create_dir_all(&p).unwrap();
            p
        };
        let (passwd, group) = identity_files(Identity {
            uid: 200_007,
            gid: 200_007,
        });
        std::fs::write(base.join("passwd"), passwd).unwrap();
        std::fs::write(base.join("group"), group).unwrap();
        Layout {
            workspace: d("workspace"),
            cache: d("cache"),
            tmp: d("tmp"),
            passwd: base.join("passwd"),
            group: base.join("group"),
            lifecycle_dir: d("lifecycle"),
            buildpacks_dir: base.join("no-buildpacks"),
            order: base.join("no-order.toml"),
            registry_ca: None,
        }
    }

    #[test]
    fn the_command_drops_to_the_tool_as_root_and_uses_a_userns_otherwise() {
        let mut b = Bwrap {
            bwrap: "/usr/bin/bwrap".into(),
            setpriv: Some("/usr/bin/setpriv".into()),
            root: vec![("bin".into(), RootEntry::Symlink("usr/bin".into()))],
        };
        let l = layout(tempfile::tempdir().unwrap().path());
        let id = Identity {
            uid: 200_007,
            gid: 200_007,
        };
        let cmd = b.command(
            &l,
            id,
            &[("CNB_REGISTRY_AUTH", "secret")],
            "/cnb/lifecycle/creator",
            &["-app".into(), "/workspace/app".into()],
        );
        let a = argv(&cmd);
        for want in [
            "--unshare-pid --unshare-ipc --unshare-uts --unshare-cgroup-try --die-with-parent --new-session",
            "--ro-bind /usr /usr --symlink usr/bin /bin",
            "--proc /proc --dev /dev",
            "/workspace --bind",
            " /cache --remount-ro / --chdir /workspace -- /usr/bin/setpriv --reuid 200007 --regid 200007 --clear-groups --inh-caps=-all --ambient-caps=-all --bounding-set=-all --no-new-privs -- /cnb/lifecycle/creator -app /workspace/app",
        ] {
            assert!(a.contains(want), "{want}\n{a}");
        }
        assert!(!a.contains("--unshare-user"), "{a}");
        assert!(!a.contains("shadow") && !a.contains("secret"), "{a}");
        let env: Vec<_> = cmd.as_std().get_envs().collect();
        assert!(
            env.iter()
                .any(|(k, v)| *k == "CNB_REGISTRY_AUTH" && *v == Some("secret".as_ref())),
            "{env:?}"
        );
        b.setpriv = None;
        let a = argv(&b.command(&l, id, &[], "/cnb/lifecycle/creator", &[]));
        assert!(a.contains("--unshare-user --disable-userns"), "{a}");
        assert!(
            a.ends_with("--chdir /workspace -- /cnb/lifecycle/creator"),
            "{a}"
        );
    }

    /// What a build can do from inside, as printed by a shell.
    const PROBE: &str = r#"
        echo "uid=$(id -u) gid=$(id -g) groups=$(id -G)"
        grep -E '^(CapEff|CapBnd|NoNewPrivs):' /proc/self/status
        echo x > /workspace/w$(id -u) && echo "workspace: writable"
        echo x > /cache/c$(id -u) && echo "cache: writable"
        echo x > /tmp/t$(id -u) && echo "tmp: writable"
        echo x > /dev/shm/s$(id -u) && echo "shm: writable"
        touch /usr/x 2>/dev/null && echo "usr: WRITABLE"
        ls /cnb/lifecycle >/dev/null && echo "lifecycle: readable"
        touch /cnb/lifecycle/x 2>/dev/null && echo "lifecycle: WRITABLE"
        touch /x 2>/dev/null && echo "root: WRITABLE"
        test -e "$HOST_PATH" && echo "host path: VISIBLE"
        cat /etc/shadow >/dev/null 2>&1 && echo "shadow: READABLE"
        cat /proc/1/environ >/dev/null 2>&1 && echo "init environ: READABLE"
        test -e "/proc/$HOST_PID" && echo "host pid: VISIBLE"
        echo "pid 1: $(cat /proc/1/comm)"
        echo "env: $(env | cut -d= -f1 | sort | tr '\n' ' ')"
        getent passwd "$(id -u)" | cut -d: -f1
    "#;

    async fn run_probe(b: &Bwrap, l: &Layout, id: Identity, as_user: Option<u32>) -> String {
        let mut cmd = b.command(
            l,
            id,
            &[
                ("HOST_PATH", l.workspace.to_str().unwrap()),
                ("HOST_PID", &std::process::id().to_string()),
            ],
            "/bin/sh",
            &["-c".into(), PROBE.into()],
        );
        if let Some(u) = as_user {
            cmd.uid(u).gid(u);
        }
        let out = cmd.output().await.unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        text
    }

    /// The sandbox for real (CI runs as root with bubblewrap installed:
    /// scripts/install-test-deps), privileged and, as `nobody`, not.
    #[tokio::test]
    async fn inside_the_sandbox() {
        if !is_root() {
            eprintln!("skipped: needs root to test both modes");
            return;
        }
        let b = Bwrap::find().expect("scripts/install-test-deps installs bubblewrap");
        let base = tempfile::tempdir().unwrap();
        let l = layout(base.path());
        let id = Identity {
            uid: 200_007,
            gid: 200_007,
        };
        b.probe(id).await.unwrap();
        for d in [&l.workspace, &l.cache, &l.tmp] {
            std::os::unix::fs::chown(d, Some(id.uid), Some(id.gid)).unwrap();
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        let text = run_probe(&b, &l, id, None).await;
        for want in [
            "uid=200007 gid=200007 groups=200007",
            "CapEff:\t0000000000000000",
            "CapBnd:\t0000000000000000",
            "NoNewPrivs:\t1",
            "workspace: writable",
            "cache: writable",
            "tmp: writable",
            "shm: writable",
            "lifecycle: readable",
            "pid 1: bwrap",
            "env: HOME HOST_PATH HOST_PID LANG PATH PWD",
            "cnb",
        ] {
            assert!(text.contains(want), "{want:?} missing:\n{text}");
        }
        assert!(
            !text.contains("WRITABLE") && !text.contains("VISIBLE") && !text.contains("READABLE"),
            "{text}"
        );
        let meta = std::fs::metadata(l.cache.join("c200007")).unwrap();
        assert_eq!(
            (
                std::os::unix::fs::MetadataExt::uid(&meta),
                meta.permissions().mode() & 0o777
            ),
            (200_007, 0o644),
            "written as the tool's uid, with umask 022"
        );

        // Unprivileged: berth as `nobody`, with a user namespace.
        let nobody = 65_534;
        let unprivileged = Bwrap {
            setpriv: None,
            ..b.clone()
        };
        std::os::unix::fs::chown(base.path(), Some(nobody), Some(nobody)).unwrap();
        for d in [&l.workspace, &l.cache, &l.tmp, &l.lifecycle_dir] {
            std::os::unix::fs::chown(d, Some(nobody), Some(nobody)).unwrap();
        }
        let me = Identity {
            uid: nobody,
            gid: nobody,
        };
        let text = run_probe(&unprivileged, &l, me, Some(nobody)).await;
        for want in [
            "uid=65534",
            "CapEff:\t0000000000000000",
            "workspace: writable",
            "cache: writable",
            "pid 1: bwrap",
        ] {
            assert!(text.contains(want), "{want:?} missing:\n{text}");
        }
        // Here the sandbox's init runs as berth's (here nobody's) uid too,
        // so its environment, the build's own, is readable; nothing else.
        assert!(
            !text.contains("WRITABLE")
                && !text.contains("VISIBLE")
                && !text.contains("shadow: READABLE"),
            "{text}"
        );
    }
}
