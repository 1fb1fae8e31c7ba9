//! What each console page shows: gathered through the storage calls and
//! handlers the APIs use (one piece of code for a limit, a GC run, a tag
//! deletion, a build), rendered with `views`. Access has been decided by
//! the surface before any of these runs.

use super::chart::{self, Series, Unit};
use super::views::{
    self, bytes, duration_ms, short_digest, time_el, usage_bar, usage_text, Ctx, Nav,
};
use super::MAX_PAGE_SIZE;
use crate::api;
use crate::error::{ApiError, ApiResult, Code};
use crate::handlers;
use crate::routes::{query_get, query_pairs};
use crate::State;
use berth_storage::meta::builds::BuildRecord;
use berth_storage::meta::console::{QuotaQuery, QuotaSort};
use berth_storage::meta::TokenOwner;
use maud::{html, Markup};

const DAY_MS: i64 = 24 * 3600 * 1000;
/// Storage charts span this much history.
const HISTORY_MS: i64 = 30 * DAY_MS;
/// Tags listed per page of a namespace.
const TAGS_PER_PAGE: u32 = 100;
/// Largest images listed on a namespace page.
const LARGEST: u32 = 10;
/// GC runs listed and charted.
const GC_RUNS: u32 = 30;
/// Items of each kind listed on a GC run's page.
const RUN_ITEMS: usize = 200;
/// The tail of a build log rendered into its page (the script then
/// streams the whole log).
const LOG_TAIL: u64 = 256 * 1024;
/// Builds listed on the builds pages.
const BUILDS_LISTED: u32 = 50;

fn page_param(pairs: &[(String, String)], key: &str) -> u64 {
    query_get(pairs, key)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        .min(1_000_000)
}

// ------------------------------------------------------------ overview ----

pub async fn overview(state: &State, ctx: &Ctx) -> ApiResult<Markup> {
    let meta = &state.storage.meta;
    let totals = meta.latest_usage_totals().await?;
    let near = meta
        .quota_page(QuotaQuery {
            sort: QuotaSort::Percent,
            descending: true,
            min_percent: Some(90.0),
            limit: 10,
            ..Default::default()
        })
        .await?;
    let runs = handlers::gc::stored_runs(state, 5).await?;
    let active = meta.active_builds().await?;
    let rates = state.ui.rates(state.metrics.request_totals());
    let error_pct = if rates.requests > 0.0 {
        rates.server_errors / rates.requests * 100.0
    } else {
        0.0
    };
    let body = html! {
        section aria-labelledby="h-storage" {
            h2 id="h-storage" { "Storage" }
            @match totals {
                Some(t) => {
                    dl.cards {
                        div { dt { "Stored" } dd { (bytes(t.stored_bytes)) } dd.sub { (t.blobs) " blobs, " (t.manifests) " manifests" } }
                        div { dt { "Charged to namespaces" } dd { (bytes(t.used_bytes)) } dd.sub { (t.namespaces) " namespaces" } }
                        div { dt { "Deduplication saves" } dd { (bytes(t.dedup_saved())) }
                              dd.sub { "of " (bytes(t.linked_bytes)) " if every repository kept its own copy" } }
                    }
                    p.note { "As of " (time_el(t.at_ms)) " (sampled every " (views::period(state.ui.config.usage_sample_interval)) ")." }
                }
                None => p { "No usage sample yet; the first is taken shortly after start." }
            }
        }
        section aria-labelledby="h-near" {
            h2 id="h-near" { "Namespaces near or over quota" }
            @if near.rows.is_empty() {
                p { "No namespace uses 90% of its limit or more." }
            } @else {
                (quota_table(ctx, &near.rows, false))
                p { a href="/ui/quotas?over=90&sort=percent&order=desc" { "All " (near.matching) " namespaces over 90%" } }
            }
        }
        section aria-labelledby="h-gc" {
            h2 id="h-gc" { "Last garbage collection runs" }
            (gc_runs_table(&runs))
            p { a href="/ui/gc" { "Garbage collection" } }
        }
        section aria-labelledby="h-builds" {
            h2 id="h-builds" { "Builds" }
            p {
                (active.iter().filter(|b| b.status == berth_storage::meta::builds::BuildStatus::Running).count()) " running, "
                (active.iter().filter(|b| b.status == berth_storage::meta::builds::BuildStatus::Pending).count()) " queued."
            }
            @if !active.is_empty() { (builds_table(ctx, &active[..active.len().min(20)], true)) }
        }
        section aria-labelledby="h-requests" {
            h2 id="h-requests" { "Requests" }
            dl.cards {
                div { dt { "Request rate" } dd { (format!("{:.2}", rates.requests)) " /s" } }
                div { dt { "Client errors (4xx)" } dd { (format!("{:.2}", rates.client_errors)) " /s" } }
                div { dt { "Server errors (5xx)" } dd { (format!("{:.2}", rates.server_errors)) " /s" } dd.sub { (format!("{error_pct:.2}")) "% of requests" } }
            }
            p.note { "Over the last " (views::period(std::time::Duration::from_secs(rates.window.as_secs().max(1)))) ", from the counters behind /metrics." }
        }
    };
    Ok(views::page(Some(ctx), "Overview", Nav::Overview, body))
}

// -------------------------------------------------------------- quotas ----

fn quota_table(ctx: &Ctx, rows: &[berth_storage::meta::NamespaceQuota], forms: bool) -> Markup {
    html! {
        div.scroll {
            table.quotas {
                caption.visually-hidden { "Namespaces with their usage and limit" }
                thead { tr {
                    th scope="col" { "Namespace" }
                    th scope="col" { "Usage" }
                    th scope="col" { "Used" }
                    th scope="col" { "Repositories" }
                    th scope="col" { "Limit from" }
                    @if forms && ctx.is_admin() { th scope="col" { "Set limit" } }
                } }
                tbody {
                    @for q in rows {
                        tr data-namespace=(q.namespace) data-used-bytes=(q.used_bytes)
                           data-limit-bytes=(q.limit_bytes.map(|l| l.to_string()).unwrap_or_default()) {
                            th scope="row" { a href=(format!("/ui/namespaces/{}", q.namespace)) { (q.namespace) } }
                            td.usage data-label="Usage" { (usage_text(q.used_bytes, q.limit_bytes)) }
                            td data-label="Used" { (usage_bar(q.used_bytes, q.limit_bytes, q.percent, &q.namespace)) }
                            td.num data-label="Repositories" { (q.repositories) }
                            td data-label="Limit from" { (q.limit_source) }
                            @if forms && ctx.is_admin() { td data-label="Set limit" { (limit_form(ctx, &q.namespace, q.limit_bytes, q.limit_source, "/ui/quotas")) } }
                        }
                    }
                }
            }
        }
    }
}

/// The set-limit form: a size, the default, or unlimited.
fn limit_form(ctx: &Ctx, ns: &str, limit: Option<u64>, source: &str, back: &str) -> Markup {
    let id = |what: &str| format!("{what}-{ns}");
    html! {
        form.limit method="post" action=(format!("/ui/quotas/{ns}")) {
            (views::csrf_field(ctx))
            input type="hidden" name="back" value=(back);
            label.visually-hidden for=(id("mode")) { "Limit of " (ns) }
            select id=(id("mode")) name="mode" {
                option value="bytes" selected[source == "override"] { "Size" }
                option value="default" selected[source == "default"] { "Default" }
                option value="unlimited" selected[source == "unlimited"] { "Unlimited" }
            }
            label.visually-hidden for=(id("limit")) { "Size for " (ns) " (e.g. 2GiB)" }
            input id=(id("limit")) name="limit" type="text" inputmode="text" size="8" placeholder="e.g. 2GiB"
                value=(limit.filter(|_| source == "override").map(bytes).unwrap_or_default());
            button type="submit" { "Set" span.visually-hidden { " the limit of " (ns) } }
        }
    }
}

pub async fn quotas(state: &State, ctx: &Ctx, query: Option<&str>) -> ApiResult<Markup> {
    let pairs = query_pairs(query);
    let sort = query_get(&pairs, "sort")
        .and_then(QuotaSort::parse)
        .unwrap_or(QuotaSort::Used);
    let descending = match query_get(&pairs, "order") {
        Some("asc") => false,
        Some("desc") => true,
        _ => sort != QuotaSort::Name,
    };
    let over = query_get(&pairs, "over")
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse::<f64>()
                .ok()
                .filter(|p| p.is_finite() && *p >= 0.0)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        Code::Unsupported,
                        format!("over={v:?} is not a percentage"),
                    )
                })
        })
        .transpose()?;
    let name = query_get(&pairs, "q")
        .map(|s| s.trim().chars().take(128).collect::<String>())
        .filter(|s| !s.is_empty());
    let per = query_get(&pairs, "per")
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(state.ui.config.page_size)
        .clamp(1, MAX_PAGE_SIZE);
    let page = page_param(&pairs, "page");
    let result = state
        .storage
        .meta
        .quota_page(QuotaQuery {
            sort,
            descending,
            min_percent: over,
            name_contains: name.clone(),
            offset: page * per as u64,
            limit: per,
        })
        .await?;
    let link = |sort: QuotaSort, desc: bool, page: u64| {
        let mut s = format!(
            "/ui/quotas?sort={}&order={}",
            sort.as_str(),
            if desc { "desc" } else { "asc" }
        );
        if let Some(o) = over {
            s.push_str(&format!("&over={o}"));
        }
        if let Some(n) = &name {
            s.push_str(&format!("&q={}", views::q(n)));
        }
        if per != state.ui.config.page_size {
            s.push_str(&format!("&per={per}"));
        }
        if page > 0 {
            s.push_str(&format!("&page={page}"));
        }
        s
    };
    let sort_link = |k: QuotaSort, label: &str| {
        let here = k == sort;
        let next_desc = if here {
            !descending
        } else {
            k != QuotaSort::Name
        };
        html! {
            a href=(link(k, next_desc, 0)) aria-current=[here.then_some("true")] {
                (label)
                @if here { (if descending { " ↓" } else { " ↑" }) span.visually-hidden { (if descending { " (descending)" } else { " (ascending)" }) } }
            }
        }
    };
    let body = html! {
        form.filters method="get" action="/ui/quotas" {
            input type="hidden" name="sort" value=(sort.as_str());
            input type="hidden" name="order" value=(if descending { "desc" } else { "asc" });
            label for="q" { "Name contains" }
            input id="q" name="q" type="search" value=(name.clone().unwrap_or_default());
            label for="over" { "Using at least" }
            select id="over" name="over" {
                option value="" selected[over.is_none()] { "any share" }
                @for p in [50.0, 80.0, 90.0, 100.0] {
                    option value=(p) selected[over == Some(p)] { (format!("{p:.0}% of the limit")) }
                }
            }
            button type="submit" { "Filter" }
        }
        p.sorts { "Sort by: "
            (sort_link(QuotaSort::Name, "name")) " · "
            (sort_link(QuotaSort::Used, "usage")) " · "
            (sort_link(QuotaSort::Percent, "share of limit")) " · "
            (sort_link(QuotaSort::Limit, "limit")) " · "
            (sort_link(QuotaSort::Repositories, "repositories"))
        }
        p { (result.matching) " of " (result.total) " namespaces match. Default limit: "
            (state.storage.meta.quota_policy().default_limit.map(bytes).unwrap_or_else(|| "unlimited".into())) "." }
        (quota_table(ctx, &result.rows, true))
        (views::pagination(page, per, result.matching, &|p| link(sort, descending, p)))
    };
    Ok(views::page(Some(ctx), "Quotas", Nav::Quotas, body))
}

/// Reads the set-limit form into a setting.
pub fn limit_setting(form: &[(String, String)]) -> ApiResult<berth_storage::meta::LimitSetting> {
    use berth_storage::meta::LimitSetting;
    let bad = |m: String| ApiError::bad_request(Code::Unsupported, m);
    match query_get(form, "mode") {
        Some("default") => Ok(LimitSetting::Default),
        Some("unlimited") => Ok(LimitSetting::Unlimited),
        Some("bytes") | None => {
            let text = query_get(form, "limit").unwrap_or("").trim();
            if text.is_empty() {
                return Err(bad(
                    "give a size such as 2GiB, or choose Default or Unlimited".into(),
                ));
            }
            let size: bytesize::ByteSize = text
                .parse()
                .map_err(|e| bad(format!("{text:?} is not a size such as 2GiB or 500MB: {e}")))?;
            Ok(LimitSetting::Bytes(size.as_u64()))
        }
        Some(other) => Err(bad(format!("unknown limit mode {other:?}"))),
    }
}

// ----------------------------------------------------------- namespace ----

/// A usage series ending with the value the ledger has now, so a chart is
/// current between samples.
fn with_now(
    points: &[berth_storage::meta::console::UsagePoint],
    now: i64,
    used: u64,
) -> Vec<(i64, f64)> {
    let mut out: Vec<(i64, f64)> = points.iter().map(|p| (p.at_ms, p.bytes as f64)).collect();
    if out.last().map(|p| p.1 as u64) != Some(used) {
        out.push((now, used as f64));
    }
    out
}

/// A namespace's API tokens, for the section on its page. API tokens
/// (issue 12) land beside the console: wiring them is this call (their
/// storage listing) and the two buttons in `tokens_section`.
/// Most API tokens the namespace page lists (the API pages through all).
const TOKENS_SHOWN: usize = 100;

async fn api_tokens(state: &State, ns: &str) -> ApiResult<Vec<api::TokenInfo>> {
    let rows = state
        .storage
        .meta
        .api_tokens(TokenOwner::Namespace(ns.to_owned()), None, TOKENS_SHOWN)
        .await?;
    let now = berth_storage::now_ms();
    Ok(rows.iter().map(|t| api::TokenInfo::new(t, now)).collect())
}

/// The namespace's API tokens with a revoke button each, and a form for a
/// new one (not offered to a session that signed in with a token: tokens
/// do not make tokens).
fn tokens_section(ctx: &Ctx, ns: &str, rows: &[api::TokenInfo]) -> Markup {
    let may_write = ctx
        .token
        .as_ref()
        .is_none_or(|t| t.scope != crate::auth::TokenScope::Pull);
    html! {
        section aria-labelledby="h-tokens" {
            h2 id="h-tokens" { "API tokens" }
            @if rows.is_empty() {
                p { "No API tokens." }
            } @else {
                div.scroll { table.tokens {
                    thead { tr {
                        th scope="col" { "Name" } th scope="col" { "Id" } th scope="col" { "Scope" } th scope="col" { "Created" }
                        th scope="col" { "Expires" } th scope="col" { "Last used" } th scope="col" { span.visually-hidden { "Actions" } }
                    } }
                    tbody { @for t in rows { tr data-token=(t.id) {
                        td data-label="Name" { (t.name) }
                        td data-label="Id" { code { (t.id) } }
                        td data-label="Scope" { (t.scope.as_str()) }
                        td data-label="Created" { (time_el(t.created_ms)) }
                        td data-label="Expires" { (time_el(t.expires_ms)) @if t.expired { " (expired)" } }
                        td data-label="Last used" { @match t.last_used_ms { Some(e) => (time_el(e)), None => "never" } }
                        td { @if may_write {
                            (views::confirm_form(ctx, &format!("/ui/namespaces/{ns}/tokens/{}/revoke", t.id),
                                &format!("Revoke {}", t.name), &[], "danger",
                                Some("Revoke this API token? Everything using it stops at once.")))
                        } }
                    } } }
                } }
            }
            @if may_write && ctx.token.is_none() {
                form.token method="post" action=(format!("/ui/namespaces/{ns}/tokens")) {
                    (views::csrf_field(ctx))
                    label for="token-name" { "Name" }
                    input id="token-name" name="name" type="text" required size="16" maxlength="64" placeholder="e.g. ci";
                    label for="token-scope" { "Scope" }
                    select id="token-scope" name="scope" {
                        option value="push" selected { "push and pull" }
                        option value="pull" { "pull only" }
                    }
                    label for="token-expires" { "Expires in" }
                    input id="token-expires" name="expires_in" type="text" size="6" placeholder="90d";
                    button type="submit" { "Create a token" }
                }
            }
        }
    }
}

/// The console form's fields as the API's request.
pub fn token_request(form: &[(String, String)]) -> ApiResult<api::CreateToken> {
    let scope = match query_get(form, "scope") {
        None | Some("") | Some("push") => api::TokenScope::Push,
        Some("pull") => api::TokenScope::Pull,
        Some(other) => {
            return Err(ApiError::bad_request(
                Code::Unsupported,
                format!(
                    "scope {:?} is not \"push\" or \"pull\"",
                    other.chars().take(16).collect::<String>()
                ),
            ))
        }
    };
    Ok(api::CreateToken {
        namespace: None,
        admin: false,
        name: query_get(form, "name").unwrap_or("").trim().to_owned(),
        expires_in: query_get(form, "expires_in")
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_owned),
        scope: Some(scope),
    })
}

/// A new API token, shown once.
pub fn token_shown(ctx: &Ctx, t: &api::TokenCreated) -> Markup {
    let ns = t.info.namespace.clone().unwrap_or_default();
    views::page(
        Some(ctx),
        &format!("API token {} of {ns}", t.info.name),
        Nav::None,
        html! {
            p { "This token is shown once: copy it now. Use it as the password of "
                code { "docker login" } " (any user name), or as " code { "Authorization: Bearer" } "." }
            dl.pairs {
                dt { "Token" } dd { code id="secret" { (t.token) } }
                dt { "Scope" } dd { (t.info.scope.as_str()) }
                dt { "Expires" } dd { (time_el(t.info.expires_ms)) }
            }
            p { a href=(format!("/ui/namespaces/{ns}")) { "Back to " (ns) } }
        },
    )
}

pub async fn namespace(
    state: &State,
    ctx: &Ctx,
    ns: &str,
    query: Option<&str>,
) -> ApiResult<Markup> {
    let meta = &state.storage.meta;
    let pairs = query_pairs(query);
    let page = page_param(&pairs, "page");
    let detail = meta.quota_detail(ns, LARGEST).await?;
    let quota = match &detail {
        Some(d) => d.quota.clone(),
        None => {
            let limit = meta.quota_available(ns).await?;
            berth_storage::meta::NamespaceQuota {
                namespace: ns.to_owned(),
                limit_bytes: limit,
                used_bytes: 0,
                available_bytes: limit,
                percent: 0.0,
                repositories: 0,
                limit_source: if limit.is_some() {
                    "default"
                } else {
                    "unlimited"
                },
            }
        }
    };
    let (tag_total, tags) = meta
        .namespace_tags(ns, page * TAGS_PER_PAGE as u64, TAGS_PER_PAGE)
        .await?;
    let pins: Vec<_> = meta
        .list_pins()
        .await?
        .into_iter()
        .filter(|p| p.repository.split('/').next() == Some(ns))
        .collect();
    let retention = meta
        .retention_overrides()
        .await?
        .into_iter()
        .find(|(n, _)| n == ns)
        .map(|(_, o)| o);
    let defaults = &state.gc.config().retention;
    let now = berth_storage::now_ms();
    let series = meta.usage_series(ns, now - HISTORY_MS).await?;
    let account = if ctx.is_admin() {
        meta.namespace_account(ns).await?.map(|a| a.rotated_ms)
    } else {
        None
    };
    let tokens = api_tokens(state, ns).await?;
    let tool = ctx.tool_of(ns);
    let here = format!("/ui/namespaces/{ns}");
    let may_delete = ctx.is_admin() || ctx.own_namespace() == Some(ns);
    let body = html! {
        section aria-labelledby="h-quota" {
            h2 id="h-quota" { "Quota" }
            p.big { (usage_text(quota.used_bytes, quota.limit_bytes)) }
            @if quota.limit_bytes.is_some() {
                p { (usage_bar(quota.used_bytes, quota.limit_bytes, quota.percent, ns)) " of the limit (" (quota.limit_source) ")." }
            }
            @if ctx.is_admin() { (limit_form(ctx, ns, quota.limit_bytes, quota.limit_source, &here)) }
            (chart::time_chart(
                &format!("Usage of {ns} over 30 days"),
                &[Series { label: ns.to_owned(), points: with_now(&series, now, quota.used_bytes) }],
                Unit::Bytes, now - HISTORY_MS, now))
        }
        @if let Some(tool) = tool {
            section aria-labelledby="h-tool" {
                h2 id="h-tool" { "Tool " (tool) }
                p { a href=(format!("/ui/tools/{tool}/builds")) { "Builds of " (tool) } " (start a build, follow its log)." }
                (views::confirm_form(ctx, &format!("/ui/tools/{tool}/clean"), "Clean: remove every tag but pinned ones", &[], "danger",
                    Some("Remove every tag of this tool's images except pinned ones?")))
                p.note { "Clean removes the tags of all of the tool's images except those of pinned (running) digests; the next garbage collection frees the space." }
            }
        }
        @if let Some(d) = &detail {
            section aria-labelledby="h-largest" {
                h2 id="h-largest" { "Largest images" }
                div.scroll { table {
                    thead { tr { th scope="col" { "Repository" } th scope="col" { "Tags" } th scope="col" { "Digest" } th scope="col" { "Size" } } }
                    tbody { @for i in &d.largest_images { tr {
                        td { (i.repository) } td { (i.tags.join(", ")) } td { (short_digest(&i.digest)) } td.num { (bytes(i.bytes)) }
                    } } }
                } }
            }
            section aria-labelledby="h-repos" {
                h2 id="h-repos" { "Repositories" }
                div.scroll { table {
                    thead { tr { th scope="col" { "Repository" } th scope="col" { "Own bytes" } th scope="col" { "Shared with other repositories" } th scope="col" { "Manifests" } th scope="col" { "Tags" } } }
                    tbody { @for r in &d.repositories_usage { tr {
                        td { (r.repository) } td.num { (bytes(r.unique_bytes)) } td.num { (bytes(r.shared_bytes)) } td.num { (r.manifests) } td.num { (r.tags) }
                    } } }
                } }
            }
        }
        section aria-labelledby="h-tags" {
            h2 id="h-tags" { "Tags" }
            @if tags.is_empty() { p { "No tags." } } @else {
                div.scroll { table.tags {
                    thead { tr { th scope="col" { "Repository" } th scope="col" { "Tag" } th scope="col" { "Digest" } th scope="col" { "Size" } th scope="col" { "Pushed" }
                        @if may_delete { th scope="col" { "Delete" } } } }
                    tbody { @for t in &tags { tr {
                        td data-label="Repository" { (t.repository) } td data-label="Tag" { code { (t.tag) } } td data-label="Digest" { (short_digest(&t.digest)) }
                        td.num data-label="Size" { (bytes(t.bytes)) } td data-label="Pushed" { (time_el(t.updated_ms)) }
                        @if may_delete { td data-label="Delete" {
                            form.inline method="post" action=(format!("/ui/namespaces/{ns}/tags/delete")) {
                                (views::csrf_field(ctx))
                                input type="hidden" name="repository" value=(t.repository);
                                input type="hidden" name="tag" value=(t.tag);
                                button type="submit" class="danger" { "Delete" span.visually-hidden { " tag " (t.tag) " of " (t.repository) } }
                            }
                        } }
                    } } }
                } }
                (views::pagination(page, TAGS_PER_PAGE, tag_total, &|p| format!("{here}?page={p}")))
            }
        }
        section aria-labelledby="h-pins" {
            h2 id="h-pins" { "Pins" }
            @if pins.is_empty() { p { "Nothing pinned: garbage collection may remove any untagged image." } } @else {
                div.scroll { table {
                    thead { tr { th scope="col" { "Repository" } th scope="col" { "Digest" } th scope="col" { "Reason" } th scope="col" { "Since" } } }
                    tbody { @for p in &pins { tr { td { (p.repository) } td { (short_digest(&p.digest)) } td { (p.reason) } td { (time_el(p.created_ms)) } } } }
                } }
            }
        }
        section aria-labelledby="h-retention" {
            h2 id="h-retention" { "Tag retention" }
            dl.pairs {
                dt { "Keep the newest" } dd { (retention.as_ref().and_then(|r| r.keep_last).unwrap_or(defaults.keep_last)) " tags per repository"
                    @if retention.as_ref().and_then(|r| r.keep_last).is_some() { " (override)" } }
                dt { "Always keep" } dd { (retention.as_ref().and_then(|r| r.protected_tags.clone()).unwrap_or_else(|| defaults.protected_tags.clone()).join(", ")) }
                dt { "Maximum age" } dd { @match retention.as_ref().and_then(|r| r.max_age_ms).or(defaults.max_age.map(|d| d.as_millis() as i64)) {
                    Some(ms) => (views::period(std::time::Duration::from_millis(ms.max(0) as u64))), None => "none" } }
                dt { "Keep tags matching" } dd { @match retention.as_ref().and_then(|r| r.keep_pattern.clone()).or(defaults.keep_pattern.as_ref().map(|p| p.as_str().to_owned())) {
                    Some(p) => code { (p) }, None => "no pattern" } }
            }
            p.note { @if retention.is_some() { "This namespace has its own retention override." } @else { "This namespace follows the default policy." } }
        }
        @if ctx.is_admin() {
            section aria-labelledby="h-creds" {
                h2 id="h-creds" { "Credentials" }
                @match account {
                    Some(rotated) => p { "The namespace account " code { (ns) } " exists (secret last set " (time_el(rotated)) ")." },
                    None => p { "No namespace account yet." },
                }
                (views::button_form(ctx, &format!("/ui/namespaces/{ns}/credentials"), if account.is_some() { "Rotate the password" } else { "Create the account" }, &[], ""))
                @if account.is_some() {
                    (views::confirm_form(ctx, &format!("/ui/namespaces/{ns}/credentials/revoke"), "Revoke the account", &[], "danger",
                        Some("Revoke this namespace account? Its pushes and sign-ins stop at once.")))
                }
            }
        }
        @if ctx.is_admin() || ctx.own_namespace() == Some(ns) {
            (tokens_section(ctx, ns, &tokens))
        }
    };
    Ok(views::page(Some(ctx), ns, Nav::Namespace, body))
}

/// The new secret, shown once.
pub fn credentials_shown(ctx: &Ctx, c: &api::Credentials) -> Markup {
    views::page(
        Some(ctx),
        &format!("Credentials of {}", c.namespace),
        Nav::None,
        html! {
            p { (if c.rotated { "The password was rotated; the old one no longer works." } else { "The account was created." })
                " This password is shown once: copy it now." }
            dl.pairs {
                dt { "User name" } dd { code { (c.username) } }
                dt { "Password" } dd { code id="secret" { (c.password) } }
            }
            p { a href=(format!("/ui/namespaces/{}", c.namespace)) { "Back to " (c.namespace) } }
        },
    )
}

// ------------------------------------------------------------------ gc ----

fn gc_runs_table(runs: &[api::GcRun]) -> Markup {
    html! {
        @if runs.is_empty() { p { "No runs yet." } } @else {
            div.scroll { table.runs {
                thead { tr {
                    th scope="col" { "Run" } th scope="col" { "Job" } th scope="col" { "Kind" } th scope="col" { "Trigger" } th scope="col" { "Status" }
                    th scope="col" { "Started" } th scope="col" { "Duration" } th scope="col" { "Removed" } th scope="col" { "Freed" }
                } }
                tbody { @for r in runs { tr data-run=(r.id) {
                    th scope="row" { a href=(format!("/ui/gc/runs/{}", r.id)) { "#" (r.id) } }
                    td { (r.job) } td { (if r.dry_run { "dry run" } else { "real" }) } td { (r.trigger) } td { (r.report.status) }
                    td { (time_el(r.started_ms)) }
                    td.num { @if r.finished_ms > 0 { (duration_ms(r.finished_ms - r.started_ms)) } @else { "running" } }
                    td { (removed_summary(&r.report)) }
                    td.num { (bytes(r.report.bytes_freed)) }
                } } }
            } }
        }
    }
}

fn removed_summary(r: &api::RunReport) -> String {
    let mut parts = Vec::new();
    for (n, what) in [
        (r.tags_removed, "tags"),
        (r.manifests_removed, "manifests"),
        (r.blob_links_removed, "blob links"),
        (r.blobs_removed, "blobs"),
        (r.orphan_objects_removed, "orphan objects"),
        (r.uploads_expired, "uploads"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    if parts.is_empty() {
        "nothing".into()
    } else {
        parts.join(", ")
    }
}

fn job_buttons(ctx: &Ctx) -> Markup {
    html! {
        div.jobs {
            @for (job, what) in [("tag-cleanup", "Tag cleanup: apply the retention policy"), ("untagged", "Untagged GC: untagged manifests, unreferenced blobs, expired uploads")] {
                div.job {
                    h3 { (what) }
                    (views::button_form(ctx, &format!("/ui/gc/{job}"), &format!("Dry run of {job}"), &[("dry_run", "true")], ""))
                    p.note { "A dry run lists what a real run would remove; its page offers the real run." }
                }
            }
        }
    }
}

pub async fn gc(state: &State, ctx: &Ctx) -> ApiResult<Markup> {
    let runs = handlers::gc::stored_runs(state, GC_RUNS).await?;
    let mut oldest_first: Vec<&api::GcRun> = runs.iter().filter(|r| r.finished_ms > 0).collect();
    oldest_first.reverse();
    let label = |r: &api::GcRun| format!("#{}{}", r.id, if r.dry_run { " (dry)" } else { "" });
    let freed: Vec<(String, f64)> = oldest_first
        .iter()
        .map(|r| (label(r), r.report.bytes_freed as f64))
        .collect();
    let took: Vec<(String, f64)> = oldest_first
        .iter()
        .map(|r| {
            (
                label(r),
                (r.finished_ms - r.started_ms).max(0) as f64 / 1000.0,
            )
        })
        .collect();
    let cfg = state.gc.config();
    let body = html! {
        p { "Tag cleanup runs on " code { (cfg.tag_cleanup_schedule) } ", untagged GC on " code { (cfg.untagged_schedule) } " (cron, UTC)"
            @if !cfg.enabled { strong { " — scheduled GC is off ([gc] enabled = false)" } } "." }
        (job_buttons(ctx))
        h2 { "Runs" }
        @if !oldest_first.is_empty() {
            div.charts {
                (chart::bar_chart("Bytes freed per run (dry runs: what they would free)", &freed, Unit::Bytes))
                (chart::bar_chart("Duration per run", &took, Unit::Seconds))
            }
        }
        (gc_runs_table(&runs))
    };
    Ok(views::page(Some(ctx), "Garbage collection", Nav::Gc, body))
}

pub async fn gc_run(state: &State, ctx: &Ctx, id: &str) -> ApiResult<Markup> {
    let no_run = || ApiError::not_found(Code::NameUnknown, format!("no GC run {id:?}"));
    let id: i64 = id.parse().map_err(|_| no_run())?;
    let run = state
        .storage
        .meta
        .gc_run(id)
        .await?
        .and_then(handlers::gc::run_from_record)
        .ok_or_else(no_run)?;
    let r = &run.report;
    let items = |list: &Vec<berth_gc::report::RemovedItem>, total: usize, what: &str| {
        html! {
            h3 { (what) " (" (total) ")" }
            @if list.is_empty() { p { "None." } } @else {
                div.scroll { table {
                    thead { tr { th scope="col" { "Repository" } th scope="col" { "Digest" } th scope="col" { "Size" } } }
                    tbody { @for i in list.iter().take(RUN_ITEMS) { tr { td { (i.repository) } td { (short_digest(&i.digest)) } td.num { (bytes(i.size)) } } } }
                } }
                @if total > list.len().min(RUN_ITEMS) { p.note { "The first " (list.len().min(RUN_ITEMS)) " are listed." } }
            }
        }
    };
    let body = html! {
        dl.pairs {
            dt { "Job" } dd { (run.job) }
            dt { "Kind" } dd { (if run.dry_run { "dry run: nothing was removed" } else { "real run" }) }
            dt { "Trigger" } dd { (run.trigger) }
            dt { "Status" } dd { (r.status) }
            dt { "Started" } dd { (time_el(run.started_ms)) }
            dt { "Duration" } dd { @if run.finished_ms > 0 { (duration_ms(run.finished_ms - run.started_ms)) } @else { "still running" } }
            dt { "Removed" } dd { (removed_summary(r)) }
            dt { "Bytes freed" } dd { (bytes(r.bytes_freed)) }
            dt { "Quota drift fixed" } dd { (r.quota_drift_fixed) " namespaces" }
        }
        @if run.dry_run && run.finished_ms > 0 {
            section.confirm aria-labelledby="h-real" {
                h2 id="h-real" { "Run it for real" }
                p { "A real run of " code { (run.job) } " now removes what it finds then: the list below, unless pushes or tag changes since this dry run changed it." }
                (views::button_form(ctx, &format!("/ui/gc/{}", run.job), &format!("Run {} now", run.job), &[("dry_run", "false")], "danger"))
            }
        }
        @if !r.errors.is_empty() {
            h2 { "Errors" }
            ul.errors { @for e in &r.errors { li { (e) } } }
        }
        @if !r.freed_per_namespace.is_empty() {
            h2 { "Quota returned per namespace" }
            div.scroll { table {
                thead { tr { th scope="col" { "Namespace" } th scope="col" { "Bytes" } } }
                tbody { @for (ns, b) in &r.freed_per_namespace { tr { td { a href=(format!("/ui/namespaces/{ns}")) { (ns) } } td.num { (bytes(*b)) } } } }
            } }
        }
        @if !r.phases_ms.is_empty() {
            h2 { "Phases" }
            dl.pairs { @for (p, ms) in &r.phases_ms { dt { (p) } dd { (duration_ms(*ms as i64)) } } }
        }
        h2 { (if run.dry_run { "What a real run would remove" } else { "What was removed" }) }
        h3 { "Tags (" (r.tags_removed) ")" }
        @if r.removed.tags.is_empty() { p { "None." } } @else {
            div.scroll { table {
                thead { tr { th scope="col" { "Repository" } th scope="col" { "Tag" } th scope="col" { "Digest" } } }
                tbody { @for t in r.removed.tags.iter().take(RUN_ITEMS) { tr { td { (t.repository) } td { code { (t.tag) } } td { (short_digest(&t.digest)) } } } }
            } }
        }
        (items(&r.removed.manifests, r.manifests_removed, "Manifests"))
        (items(&r.removed.blob_links, r.blob_links_removed, "Blob links"))
        (items(&r.removed.blobs, r.blobs_removed, "Blobs"))
        (items(&r.removed.orphan_objects, r.orphan_objects_removed, "Orphan objects"))
        p { a href="/ui/gc" { "All runs" } }
    };
    Ok(views::page(
        Some(ctx),
        &format!("GC run #{}", run.id),
        Nav::Gc,
        body,
    ))
}

// -------------------------------------------------------------- builds ----

fn builds_table(ctx: &Ctx, builds: &[BuildRecord], show_tool: bool) -> Markup {
    let _ = ctx;
    html! {
        div.scroll { table.builds {
            thead { tr {
                th scope="col" { "Build" } @if show_tool { th scope="col" { "Tool" } } th scope="col" { "Image" } th scope="col" { "Status" }
                th scope="col" { "Created" } th scope="col" { "Duration" } th scope="col" { "Message" }
            } }
            tbody { @for b in builds { tr data-build=(b.id) data-status=(b.status.as_str()) {
                th scope="row" { a href=(format!("/ui/tools/{}/builds/{}", b.tool, b.id)) { (b.id) } }
                @if show_tool { td data-label="Tool" { (b.tool) } }
                td data-label="Image" { (b.image_name) }
                td data-label="Status" { span class=(format!("status {}", b.status.as_str().to_lowercase())) { (b.status.as_str()) } }
                td data-label="Created" { (time_el(b.created_ms)) }
                td.num data-label="Duration" { @match (b.start_ms, b.end_ms) { (Some(s), Some(e)) => (duration_ms(e - s)), (Some(_), None) => "running", _ => "—" } }
                td data-label="Message" { (b.message) }
            } } }
        } }
    }
}

pub async fn builds(state: &State, ctx: &Ctx) -> ApiResult<Markup> {
    let active = state.storage.meta.active_builds().await?;
    let recent = state.storage.meta.recent_builds(BUILDS_LISTED).await?;
    let c = state.builds.config();
    let body = html! {
        p { "At most " (c.max_parallel) " builds run at once (" (c.per_tool_parallel) " per tool); the rest wait in the queue." }
        h2 { "Running and queued" }
        @if active.is_empty() { p { "No build is running or waiting." } } @else { (builds_table(ctx, &active, true)) }
        h2 { "Recent builds of every tool" }
        @if recent.is_empty() { p { "No builds yet." } } @else { (builds_table(ctx, &recent, true)) }
    };
    Ok(views::page(Some(ctx), "Builds", Nav::Builds, body))
}

pub async fn tool_builds(state: &State, ctx: &Ctx, tool: &str) -> ApiResult<Markup> {
    let list = state.builds.list(tool).await?;
    let ns = state.builds.namespace(tool);
    let trigger = handlers::triggers::current(state, tool).await?;
    let body = html! {
        section aria-labelledby="h-start" {
            h2 id="h-start" { "Start a build" }
            form.build method="post" action=(format!("/ui/tools/{tool}/builds")) {
                (views::csrf_field(ctx))
                label for="source_url" { "Source repository URL" }
                input id="source_url" name="source_url" type="url" required placeholder="https://gitlab.wikimedia.org/toolforge-repos/...";
                label for="ref" { "Git ref (branch, tag or commit; empty for the default branch)" }
                input id="ref" name="ref" type="text";
                label for="image_name" { "Image name (empty for " code { "tool" } ")" }
                input id="image_name" name="image_name" type="text";
                label for="envvars" { "Environment variables, one NAME=value per line" }
                textarea id="envvars" name="envvars" rows="3" {}
                div.check {
                    input id="use_latest_versions" name="use_latest_versions" type="checkbox" value="true";
                    label for="use_latest_versions" { "Use the latest buildpack versions" }
                }
                button type="submit" { "Start the build" }
            }
        }
        (trigger_section(ctx, tool, trigger.as_ref().map(|t| &t.trigger)))
        section aria-labelledby="h-list" {
            h2 id="h-list" { "Builds of " (tool) }
            @if list.is_empty() { p { "No builds yet." } } @else { (builds_table(ctx, &list[..list.len().min(BUILDS_LISTED as usize)], false)) }
            p { "Images go to " code { (ns) "/<image>" } "; see " a href=(format!("/ui/namespaces/{ns}")) { (ns) } "." }
        }
    };
    Ok(views::page(
        Some(ctx),
        &format!("Builds of {tool}"),
        Nav::Builds,
        body,
    ))
}

/// The tool's build trigger: what it builds and its hook, and the form
/// that sets it (README's "Builds on git push" says what to do on the
/// forge).
fn trigger_section(ctx: &Ctx, tool: &str, t: Option<&api::ToolTrigger>) -> Markup {
    let envvars = t
        .map(|t| {
            t.envvars
                .iter()
                .map(|(k, v)| format!("{k}={v}\n"))
                .collect::<String>()
        })
        .unwrap_or_default();
    html! {
        section aria-labelledby="h-trigger" {
            h2 id="h-trigger" { "Build on git push" }
            @match t {
                Some(t) => {
                    dl.pairs {
                        dt { "Hook URL" } dd { code id="hook-url" { (t.hook_url) } }
                        dt { "Repository" } dd { code { (t.source_url) } }
                        dt { "Builds pushes to" } dd { @match &t.reference { Some(r) => code { (r) }, None => "the default branch" } }
                        dt { "Updated" } dd { (t.updated_time) }
                    }
                    (views::button_form(ctx, &format!("/ui/tools/{tool}/trigger/rotate"), "Make a new secret", &[], ""))
                    (views::confirm_form(ctx, &format!("/ui/tools/{tool}/trigger/delete"), "Delete the trigger", &[], "danger",
                        Some("Delete this build trigger? Pushes stop starting builds.")))
                }
                None => p { "Pushes start no builds. Set a trigger, then add its hook URL and secret as a push webhook on the forge." },
            }
            form.build.trigger method="post" action=(format!("/ui/tools/{tool}/trigger")) {
                (views::csrf_field(ctx))
                label for="trigger_source_url" { "Repository URL (as the forge names it)" }
                input id="trigger_source_url" name="source_url" type="url" required value=(t.map(|t| t.source_url.as_str()).unwrap_or(""));
                label for="trigger_ref" { "Branches to build (a branch, a full ref or a pattern with *; empty for the default branch)" }
                input id="trigger_ref" name="ref" type="text" value=(t.and_then(|t| t.reference.as_deref()).unwrap_or(""));
                label for="trigger_image_name" { "Image name (empty for " code { "tool" } ")" }
                input id="trigger_image_name" name="image_name" type="text" value=(t.and_then(|t| t.image_name.as_deref()).unwrap_or(""));
                label for="trigger_envvars" { "Environment variables, one NAME=value per line" }
                textarea id="trigger_envvars" name="envvars" rows="3" { (envvars) }
                button type="submit" { (if t.is_some() { "Update the trigger" } else { "Set the trigger" }) }
            }
        }
    }
}

/// Reads the trigger form (its fields are the build form's).
pub fn trigger_request(form: &[(String, String)]) -> ApiResult<api::PutTrigger> {
    let b = build_request(form)?;
    Ok(api::PutTrigger {
        source_url: b.source_url,
        reference: b.reference,
        image_name: b.image_name,
        envvars: b.envvars,
    })
}

/// A trigger's new secret, shown once, with what to do with it.
pub fn trigger_shown(ctx: &Ctx, tool: &str, t: &api::ToolTriggerShown) -> Markup {
    views::page(
        Some(ctx),
        &format!("Build trigger of {tool}"),
        Nav::Builds,
        html! {
            p { "Add a webhook for push events on the forge with this URL and secret. The secret is shown once: copy it now." }
            dl.pairs {
                dt { "Hook URL" } dd { code id="hook-url" { (t.trigger.hook_url) } }
                dt { "Secret" } dd { code id="secret" { (t.secret.as_deref().unwrap_or("")) } }
            }
            p { "GitLab: Settings → Webhooks, the URL, the secret as Secret token, Push events. GitHub, Gitea, Forgejo: Settings → Webhooks, the URL, content type application/json, the secret, just the push event." }
            p { a href=(format!("/ui/tools/{tool}/builds")) { "Back to the builds of " (tool) } }
        },
    )
}

/// Reads the start-a-build form.
pub fn build_request(form: &[(String, String)]) -> ApiResult<berth_builds::BuildRequest> {
    let get = |k: &str| {
        query_get(form, k)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let mut envvars = std::collections::BTreeMap::new();
    for line in query_get(form, "envvars").unwrap_or("").lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or_else(|| {
            ApiError::bad_request(
                Code::Unsupported,
                format!(
                    "environment line {:?} is not NAME=value",
                    line.chars().take(64).collect::<String>()
                ),
            )
        })?;
        envvars.insert(k.trim().to_owned(), v.to_owned());
    }
    Ok(berth_builds::BuildRequest {
        source_url: get("source_url").unwrap_or_default(),
        reference: get("ref"),
        image_name: get("image_name"),
        envvars,
        use_latest_versions: query_get(form, "use_latest_versions") == Some("true"),
    })
}

/// The last `LOG_TAIL` bytes of a log file (or why there is none).
async fn log_tail(path: std::path::PathBuf) -> String {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(_) => return String::new(),
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let start = len.saturating_sub(LOG_TAIL);
        if f.seek(SeekFrom::Start(start)).is_err() {
            return String::new();
        }
        let mut buf = Vec::with_capacity((len - start) as usize);
        let _ = f.take(LOG_TAIL).read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if start > 0 {
            format!("[... the first {start} bytes are not shown ...]\n{text}")
        } else {
            text
        }
    })
    .await
    .unwrap_or_default()
}

pub async fn build(state: &State, ctx: &Ctx, tool: &str, id: &str) -> ApiResult<Markup> {
    let b = state.builds.get(tool, id).await?;
    let log = log_tail(std::path::PathBuf::from(&b.log_path)).await;
    let running = !b.status.is_finished();
    let body = html! {
        dl.pairs {
            dt { "Status" } dd { span id="build-status" class=(format!("status {}", b.status.as_str().to_lowercase())) { (b.status.as_str()) } }
            dt { "Message" } dd { (b.message) }
            dt { "Source" } dd { code { (b.params.source_url) } " at " code { (b.params.reference) } " (" code { (b.resolved_ref.chars().take(12).collect::<String>()) } ")" }
            dt { "Triggered by" } dd { @match &b.trigger {
                berth_storage::meta::builds::BuildTrigger::Manual => "a person (started by hand)",
                berth_storage::meta::builds::BuildTrigger::Push { commit, reference, pusher } => {
                    "a push of " code { (commit.chars().take(12).collect::<String>()) } " to " code { (reference) } " by " (pusher)
                }
            } }
            dt { "Image" } dd { code { (if b.destination_image.is_empty() { format!("{}/{}", state.builds.namespace(tool), b.image_name) } else { b.destination_image.clone() }) } }
            dt { "Created" } dd { (time_el(b.created_ms)) }
            @if let Some(s) = b.start_ms { dt { "Started" } dd { (time_el(s)) } }
            @if let Some(e) = b.end_ms { dt { "Ended" } dd { (time_el(e)) } }
        }
        @if running {
            (views::button_form(ctx, &format!("/ui/tools/{tool}/builds/{}/cancel", b.id), "Cancel the build", &[], "danger"))
        }
        h2 id="h-log" { "Log" }
        @if running { p.note id="log-note" role="status" { "The log follows the build while it runs (reload the page if scripts are off)." } }
        pre.log id="build-log" tabindex="0" aria-labelledby="h-log"
            data-follow=[running.then(|| format!("/ui/tools/{tool}/builds/{}/log?follow=true", b.id))] { (log) }
        p { a href=(format!("/ui/tools/{tool}/builds/{}/log", b.id)) { "The whole log as text" } " · " a href=(format!("/ui/tools/{tool}/builds")) { "All builds of " (tool) } }
    };
    Ok(views::page(
        Some(ctx),
        &format!("Build {}", b.id),
        Nav::Builds,
        body,
    ))
}

// ------------------------------------------------------------- storage ----

pub async fn storage(state: &State, ctx: &Ctx) -> ApiResult<Markup> {
    let meta = &state.storage.meta;
    let now = berth_storage::now_ms();
    let since = now - HISTORY_MS;
    let totals = meta.usage_totals(since).await?;
    let top = meta
        .quota_page(QuotaQuery {
            sort: QuotaSort::Used,
            descending: true,
            limit: 6,
            ..Default::default()
        })
        .await?;
    let mut per_ns = Vec::new();
    for q in &top.rows {
        let points = meta.usage_series(&q.namespace, since).await?;
        per_ns.push(Series {
            label: q.namespace.clone(),
            points: with_now(&points, now, q.used_bytes),
        });
    }
    let series =
        |label: &str, f: &dyn Fn(&berth_storage::meta::console::UsageTotals) -> u64| Series {
            label: label.to_owned(),
            points: totals.iter().map(|t| (t.at_ms, f(t) as f64)).collect(),
        };
    let body = html! {
        p { "Sampled every " (views::period(state.ui.config.usage_sample_interval)) " and kept for "
            (views::period(state.ui.config.usage_retention)) "; a namespace is recorded when its usage changed." }
        h2 { "In total" }
        (chart::time_chart("Registry storage over 30 days", &[
            series("charged to namespaces", &|t| t.used_bytes),
            series("stored (each blob once)", &|t| t.stored_bytes),
            series("without deduplication", &|t| t.linked_bytes),
        ], Unit::Bytes, since, now))
        h2 { "The largest namespaces" }
        (chart::time_chart("Usage of the six largest namespaces over 30 days", &per_ns, Unit::Bytes, since, now))
        form.filters method="get" action="/ui/quotas" {
            label for="q" { "Find a namespace" }
            input id="q" name="q" type="search";
            button type="submit" { "Find" }
        }
    };
    Ok(views::page(
        Some(ctx),
        "Storage over time",
        Nav::Storage,
        body,
    ))
}
