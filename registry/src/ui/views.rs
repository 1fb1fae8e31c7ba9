//! The console's page frame and the pieces pages share (forms with their
//! CSRF field, sizes, times, usage bars, pagination), in maud: every
//! value is escaped as it is written, so a tag or repository name is
//! text, never markup.

use crate::auth::Principal;
use crate::error::human_bytes;
use maud::{html, Markup, PreEscaped, DOCTYPE};

/// Who is looking, and what their forms need.
pub struct Ctx {
    pub principal: Principal,
    /// The API token the session signed in with, if any.
    pub token: Option<crate::auth::TokenUse>,
    pub csrf: String,
    pub flash: Option<String>,
    /// Tool `foo` owns namespace `<prefix>foo`.
    pub tool_prefix: String,
}

impl Ctx {
    pub fn is_admin(&self) -> bool {
        matches!(self.principal, Principal::Admin | Principal::Unrestricted)
    }

    /// The namespace a namespace account owns.
    pub fn own_namespace(&self) -> Option<&str> {
        match &self.principal {
            Principal::Namespace(ns) => Some(ns),
            _ => None,
        }
    }

    /// The tool behind a namespace account, when it is a tool's.
    pub fn own_tool(&self) -> Option<&str> {
        self.own_namespace()
            .and_then(|ns| ns.strip_prefix(self.tool_prefix.as_str()))
            .filter(|t| !t.is_empty())
    }

    /// The tool owning `ns`, when `ns` is a tool's namespace.
    pub fn tool_of<'a>(&self, ns: &'a str) -> Option<&'a str> {
        ns.strip_prefix(self.tool_prefix.as_str())
            .filter(|t| berth_builds::valid_tool(t))
    }
}

/// Where a page sits in the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Quotas,
    Gc,
    Builds,
    Storage,
    Namespace,
    None,
}

fn nav_link(href: &str, label: &str, here: bool) -> Markup {
    html! {
        li {
            @if here {
                a href=(href) aria-current="page" { (label) }
            } @else {
                a href=(href) { (label) }
            }
        }
    }
}

/// The hidden CSRF field every state-changing form carries.
pub fn csrf_field(ctx: &Ctx) -> Markup {
    html! { input type="hidden" name="csrf" value=(ctx.csrf); }
}

/// A one-button form (POST) with hidden fields.
pub fn button_form(
    ctx: &Ctx,
    action: &str,
    label: &str,
    fields: &[(&str, &str)],
    class: &str,
) -> Markup {
    confirm_form(ctx, action, label, fields, class, None)
}

/// Like `button_form`; with `confirm`, the script asks first.
pub fn confirm_form(
    ctx: &Ctx,
    action: &str,
    label: &str,
    fields: &[(&str, &str)],
    class: &str,
    confirm: Option<&str>,
) -> Markup {
    html! {
        form.inline method="post" action=(action) data-confirm=[confirm] {
            (csrf_field(ctx))
            @for (k, v) in fields {
                input type="hidden" name=(k) value=(v);
            }
            button type="submit" class=(class) { (label) }
        }
    }
}

/// A whole page: header with navigation and sign-out, then `body`.
pub fn page(ctx: Option<&Ctx>, title: &str, nav: Nav, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="same-origin";
                title { (title) " · berth" }
                link rel="stylesheet" href=(concat!("/ui/assets/console.css?v=", env!("CARGO_PKG_VERSION")));
                script src=(concat!("/ui/assets/console.js?v=", env!("CARGO_PKG_VERSION"))) defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/ui/" { "berth" }
                    @if let Some(ctx) = ctx {
                        nav aria-label="Console" {
                            ul {
                                @if ctx.is_admin() {
                                    (nav_link("/ui/", "Overview", nav == Nav::Overview))
                                    (nav_link("/ui/quotas", "Quotas", nav == Nav::Quotas))
                                    (nav_link("/ui/gc", "Garbage collection", nav == Nav::Gc))
                                    (nav_link("/ui/builds", "Builds", nav == Nav::Builds))
                                    (nav_link("/ui/storage", "Storage over time", nav == Nav::Storage))
                                } @else if let Some(ns) = ctx.own_namespace() {
                                    (nav_link(&format!("/ui/namespaces/{ns}"), ns, nav == Nav::Namespace))
                                    @if let Some(tool) = ctx.own_tool() {
                                        (nav_link(&format!("/ui/tools/{tool}/builds"), "Builds", nav == Nav::Builds))
                                    }
                                }
                            }
                        }
                        form.signout method="post" action="/ui/logout" {
                            (csrf_field(ctx))
                            span.who { "Signed in as " strong { (ctx.principal.name()) } }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main id="main" {
                    @if let Some(msg) = ctx.and_then(|c| c.flash.as_deref()) {
                        p.flash role="status" { (msg) }
                    }
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// An error page: the status and berth's message.
pub fn error_page(ctx: Option<&Ctx>, status: http::StatusCode, message: &str) -> Markup {
    let title = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    page(
        ctx,
        &title,
        Nav::None,
        html! {
            p.error role="alert" { (message) }
            p { a href="/ui/" { "Back to the console" } }
        },
    )
}

/// The sign-in form. `token` pairs with the `berth_login` cookie.
pub fn login_page(token: &str, next: &str, error: Option<&str>, auth_enabled: bool) -> Markup {
    page(
        None,
        "Sign in",
        Nav::None,
        html! {
            @if let Some(e) = error {
                p.error role="alert" id="login-error" { (e) }
            }
            form.login method="post" action="/ui/login" {
                input type="hidden" name="login_csrf" value=(token);
                input type="hidden" name="next" value=(next);
                @if auth_enabled {
                    p { "Sign in as " code { "admin" } " or with a namespace account (e.g. " code { "tool-foo" } ") and its password." }
                    label for="username" { "User name" }
                    input id="username" name="username" type="text" autocomplete="username" required autofocus;
                    label for="password" { "Password" }
                    input id="password" name="password" type="password" autocomplete="current-password" required;
                } @else {
                    p { "Authentication is off on this registry ([auth] enabled = false): anyone who reaches it may do everything." }
                    input type="hidden" name="username" value="";
                    input type="hidden" name="password" value="";
                }
                button type="submit" { "Sign in" }
            }
        },
    )
}

pub fn bytes(n: u64) -> String {
    human_bytes(n)
}

/// "12.3 MiB of 1.0 GiB", or "12.3 MiB (unlimited)".
pub fn usage_text(used: u64, limit: Option<u64>) -> String {
    match limit {
        Some(l) => format!("{} of {}", bytes(used), bytes(l)),
        None => format!("{} (unlimited)", bytes(used)),
    }
}

/// A usage bar: a `<meter>` (announced by screen readers) with the
/// percentage beside it.
pub fn usage_bar(used: u64, limit: Option<u64>, percent: f64, label: &str) -> Markup {
    html! {
        @match limit {
            Some(l) => {
                meter min="0" max=(l.max(1)) low=((l as f64 * 0.8) as u64) high=((l as f64 * 0.9) as u64) optimum="0"
                    value=(used.min(l.max(1))) aria-label=(format!("{label}: {percent:.1}% of the limit used")) {
                    (format!("{percent:.1}%"))
                }
                " "
                span.pct { (format!("{percent:.1}%")) }
            }
            None => span.pct { "no limit" }
        }
    }
}

/// `2026-11-27 14:03 UTC`.
pub fn time(ms: i64) -> String {
    if ms <= 0 {
        return "—".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    format!("{} {} UTC", &s[..10], &s[11..16])
}

/// `<time>` with the machine-readable value too.
pub fn time_el(ms: i64) -> Markup {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    html! { time datetime=(humantime::format_rfc3339_seconds(t).to_string()) { (time(ms)) } }
}

/// `30 days`, `1 hour`, `15 minutes`: a configured period in words.
pub fn period(d: std::time::Duration) -> String {
    let s = d.as_secs();
    let (n, unit) = if s >= 86_400 && s.is_multiple_of(86_400) {
        (s / 86_400, "day")
    } else if s >= 3600 && s.is_multiple_of(3600) {
        (s / 3600, "hour")
    } else if s >= 60 && s.is_multiple_of(60) {
        (s / 60, "minute")
    } else {
        (s, "second")
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// `1.2 s`, `340 ms`, `3 min 5 s`.
pub fn duration_ms(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 120_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// The first 12 hex digits of a digest, the whole in a tooltip.
pub fn short_digest(d: &str) -> Markup {
    let hex = d.split_once(':').map(|(_, h)| h).unwrap_or(d);
    html! { code title=(d) { (hex.chars().take(12).collect::<String>()) } }
}

/// Previous/next links for a list of `total` rows shown `per` at a time;
/// `href(page)` makes a page's link.
pub fn pagination(page: u64, per: u32, total: u64, href: &dyn Fn(u64) -> String) -> Markup {
    let pages = total.div_ceil(per.max(1) as u64).max(1);
    let first = if total == 0 { 0 } else { page * per as u64 + 1 };
    let last = ((page + 1) * per as u64).min(total);
    html! {
        nav.pages aria-label="Pages" {
            span { "Showing " (first) "–" (last) " of " (total) " (page " (page + 1) " of " (pages) ")" }
            @if page > 0 {
                a href=(href(0)) { "First" }
                a href=(href(page - 1)) rel="prev" { "Previous" }
            }
            @if page + 1 < pages {
                a href=(href(page + 1)) rel="next" { "Next" }
                a href=(href(pages - 1)) { "Last" }
            }
        }
    }
}

/// Percent-encodes a query value.
pub fn q(v: &str) -> String {
    form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

/// Raw, trusted markup (compiled-in text only).
pub fn raw(s: &'static str) -> PreEscaped<&'static str> {
    PreEscaped(s)
}
