//! Target `config`: the TOML config (`berth::config::Config::parse`) and
//! everything derived from it at start-up. Refusing a config is fine;
//! panicking on one, or deriving settings that break berth's own bounds,
//! is not.

use berth::config::{parse_size_or_unlimited, Config};

pub fn config(data: &[u8]) {
    let text = crate::text(data);
    let _ = parse_size_or_unlimited(&text);
    let Ok(mut cfg) = Config::parse(&text) else {
        return;
    };
    let limits_ok = cfg.limits.validate().is_ok();
    for budget in [None, Some(0), Some(1), Some(1 << 20), Some(u64::MAX)] {
        let c = cfg.limits.connection_limits(budget);
        if limits_ok {
            assert!(c.max_connections >= 1, "no connection allowed");
        }
        assert!(c.max_connections <= cfg.limits.max_connections.max(1));
    }
    let _ = cfg.limits.upload_limits(cfg.storage.inline_blob_max);
    let _ = cfg.limits.auth_limits();
    let _ = cfg.quota.policy(Some(90.0));
    let _ = cfg.gc.validate();
    if cfg.resolve().is_ok() {
        let b = &cfg.builds;
        assert!(b.max_parallel >= 1 && b.per_tool_parallel >= 1);
        assert!(b
            .source_schemes
            .iter()
            .all(|s| *s == s.to_ascii_lowercase()));
        assert!(!b.registry_host.is_empty());
    }
}
