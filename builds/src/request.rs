//! What a build request may contain: tool names, git refs, and the names
//! of `envvars` (Toolforge's grammar, minus the names the platform, the
//! dynamic loader or the shell give a meaning of their own).
//!
//! `envvars` end up in the lifecycle's `platform/env/`, which it applies
//! to the buildpacks' processes. Refused: the platform's own settings
//! (`CNB_*`, `BERTH_*`), what the dynamic loader and libc act on before
//! any program runs (`LD_*`, `GLIBC_TUNABLES`, `GCONV_PATH`, ...), what
//! shells execute or parse by (`BASH_ENV`, `ENV`, `IFS`, `PS4`, ...), and
//! the process basics the platform sets (`PATH`, `HOME`, `USER`, ...).
//! Allowed: language runtimes' own options (`NODE_OPTIONS`, `PYTHONPATH`,
//! `JAVA_TOOL_OPTIONS`...) and buildpack settings (`BP_*`): builds use
//! them for real, and they act only inside the tool's own sandboxed build.

/// Tool names as Toolforge has them: `^[a-z]([-_a-z0-9]{0,254}[a-z0-9])?$`.
pub fn valid_tool(tool: &str) -> bool {
    let b = tool.as_bytes();
    !b.is_empty()
        && b.len() <= 256
        && b[0].is_ascii_lowercase()
        && (b.len() == 1 || b[b.len() - 1].is_ascii_lowercase() || b[b.len() - 1].is_ascii_digit())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
}

/// Environment variable names Toolforge accepts: `^[A-Za-z_][A-Za-z_0-9]{2,}$`.
pub fn valid_env_name(n: &str) -> bool {
    let b = n.as_bytes();
    b.len() >= 3
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// Prefixes of reserved names, with who reads them.
const RESERVED_PREFIXES: &[(&str, &str)] = &[
    ("CNB_", "the buildpacks lifecycle"),
    ("BERTH_", "berth"),
    ("LD_", "the dynamic loader"),
    ("MALLOC_", "the C library"),
];

/// Reserved names, with who reads them.
const RESERVED_NAMES: &[(&str, &str)] = &[
    ("PATH", "the platform"),
    ("HOME", "the platform"),
    ("USER", "the platform"),
    ("LOGNAME", "the platform"),
    ("SHELL", "the platform"),
    ("PWD", "the platform"),
    ("OLDPWD", "the platform"),
    ("TMPDIR", "the platform"),
    ("HOSTNAME", "the platform"),
    ("GLIBC_TUNABLES", "the C library"),
    ("GCONV_PATH", "the C library"),
    ("GETCONF_DIR", "the C library"),
    ("LOCPATH", "the C library"),
    ("NLSPATH", "the C library"),
    ("TZDIR", "the C library"),
    ("HOSTALIASES", "the resolver"),
    ("LOCALDOMAIN", "the resolver"),
    ("RES_OPTIONS", "the resolver"),
    ("RESOLV_HOST_CONF", "the resolver"),
    ("BASH_ENV", "the shell"),
    ("ENV", "the shell"),
    ("IFS", "the shell"),
    ("CDPATH", "the shell"),
    ("GLOBIGNORE", "the shell"),
    ("BASHOPTS", "the shell"),
    ("SHELLOPTS", "the shell"),
    ("PS4", "the shell"),
    ("PROMPT_COMMAND", "the shell"),
];

/// Who gives `name` a meaning of its own, if it is reserved.
pub fn reserved_env(name: &str) -> Option<&'static str> {
    RESERVED_NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .or_else(|| RESERVED_PREFIXES.iter().find(|(p, _)| name.starts_with(p)))
        .map(|(_, who)| *who)
}

/// Why `name` cannot be an `envvars` name, if it cannot.
pub fn check_env_name(name: &str) -> Result<(), String> {
    if !valid_env_name(name) {
        return Err(format!(
            "environment variable name {:?} must match ^[A-Za-z_][A-Za-z_0-9]{{2,}}$",
            name.chars().take(100).collect::<String>()
        ));
    }
    if let Some(who) = reserved_env(name) {
        return Err(format!(
            "environment variable {name} is reserved: {who} gives it a meaning of its own; choose another name"
        ));
    }
    Ok(())
}

/// Why `reference` cannot be a git ref (branch, tag, `HEAD` or commit id),
/// if it cannot: git's own rules (`git check-ref-format`), roughly.
pub fn check_ref(reference: &str) -> Result<(), String> {
    let bad = reference.len() > 255
        || reference.starts_with(['-', '/', '.'])
        || reference.ends_with(['/', '.'])
        || reference.ends_with(".lock")
        || reference.contains("..")
        || reference.contains("@{")
        || reference.contains("//")
        || reference
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c));
    if bad {
        Err(format!(
            "ref {:?} is not a git branch, tag or commit id",
            reference.chars().take(100).collect::<String>()
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(
            valid_tool("a")
                && valid_tool("my-tool_2")
                && !valid_tool("My")
                && !valid_tool("a-")
                && !valid_tool("")
        );
        assert!(
            valid_env_name("FOO")
                && valid_env_name("_AB")
                && !valid_env_name("AB")
                && !valid_env_name("1AB")
                && !valid_env_name("A-B")
        );
    }

    #[test]
    fn reserved_names_are_refused_and_ordinary_ones_kept() {
        for name in [
            "CNB_PLATFORM_API",
            "CNB_REGISTRY_AUTH",
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "PATH",
            "HOME",
            "BASH_ENV",
            "ENV",
            "IFS",
            "PS4",
            "GLIBC_TUNABLES",
            "BERTH_ADMIN_PASSWORD",
        ] {
            let e = check_env_name(name).unwrap_err();
            assert!(e.contains("reserved"), "{name}: {e}");
        }
        for name in [
            "GREETING",
            "BP_NODE_VERSION",
            "NODE_OPTIONS",
            "PYTHONPATH",
            "path",
            "MY_PATH",
            "CNB",
        ] {
            assert!(check_env_name(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn refs() {
        for ok in [
            "main",
            "HEAD",
            "v1.2.3",
            "feature/x",
            "0123456789abcdef0123456789abcdef01234567",
        ] {
            assert!(check_ref(ok).is_ok(), "{ok}");
        }
        for bad in [
            "-main", "a..b", "a b", "a:b", "x^", "x~1", "/x", "x/", "a@{1}", "x.lock", "a\nb",
        ] {
            assert!(check_ref(bad).is_err(), "{bad}");
        }
    }
}
