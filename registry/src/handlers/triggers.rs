//! Build triggers: a tool's `/v1/tool/{tool}/trigger` (GET, PUT, DELETE,
//! `POST .../rotate`) and forges' deliveries to `/v1/hooks/{id}`.
//!
//! A delivery is judged in this order, and whatever refuses it starts
//! nothing: the hook (404; an address sending failures is slowed, see
//! `hooks`), the body (413 over `MAX_HOOK_BODY`), the forge's event header
//! (400 without one), the secret (401 missing, 403 wrong), the tool's
//! delivery rate (429), the event (a ping is answered, other events are
//! ignored), the payload (400 malformed), its repository (422 unless the
//! trigger's source), then deleted refs and refs the pattern does not
//! match are acknowledged and ignored (200), and a matching push queues a
//! build of exactly its commit (202), coalesces onto a waiting one (202)
//! or is a replay (409).

use crate::api::{
    self, HookAnswer, Messages, PutTrigger, ToolMessages, ToolTrigger, ToolTriggerShown,
};
use crate::body::{self, Body};
use crate::error::{ApiError, ApiResult, Code};
use crate::hooks::payload::{self, EventKind, Forge};
use crate::hooks::signature::{check_hub_signature, check_token, Proof};
use crate::hooks::{new_hook_id, valid_hook_id, MAX_HOOK_BODY};
use crate::request_body::RequestBody;
use crate::State;
use berth_builds::trigger::{check_ref_pattern, ref_matches, same_repository};
use berth_builds::{BuildError, BuildRequest, Push, PushOutcome};
use berth_storage::meta::builds::TriggerRecord;
use berth_storage::now_ms;
use http::{header, Request, Response, StatusCode};
use std::net::IpAddr;

/// Where the forge delivers `id`'s pushes.
fn hook_url(state: &State, id: &str) -> String {
    format!(
        "{}/v1/hooks/{id}",
        state.config.public_url.as_deref().unwrap_or("")
    )
}

fn no_trigger(tool: &str) -> ApiError {
    ApiError::not_found(
        Code::NameUnknown,
        format!("tool {tool} has no build trigger; PUT /v1/tool/{tool}/trigger creates one"),
    )
}

fn shown(
    state: &State,
    t: &TriggerRecord,
    secret: Option<String>,
    info: Vec<String>,
) -> ToolTriggerShown {
    ToolTriggerShown {
        trigger: ToolTrigger::new(t, hook_url(state, &t.id)),
        secret,
        messages: Messages::info(info),
    }
}

fn what_builds(t: &TriggerRecord) -> String {
    let refs = match &t.ref_pattern {
        None => "its default branch".to_owned(),
        Some(p) => format!("refs matching {p:?}"),
    };
    format!("pushes to {refs} of {} start builds", t.source_url)
}

/// `GET .../trigger`: the trigger, without its secret.
pub async fn show(state: &State, tool: &str) -> ApiResult<Response<Body>> {
    let shown = current(state, tool)
        .await?
        .ok_or_else(|| no_trigger(tool))?;
    Ok(body::json_response(StatusCode::OK, &shown))
}

/// The tool's trigger, if it has one (never its secret).
pub async fn current(state: &State, tool: &str) -> ApiResult<Option<ToolTriggerShown>> {
    Ok(state
        .storage
        .meta
        .trigger_of_tool(tool)
        .await?
        .map(|t| shown(state, &t, None, vec![what_builds(&t)])))
}

/// `PUT .../trigger` with `{"source_url", "ref", "image_name", "envvars"}`:
/// checked as a build request is (and the source resolved, as a build's
/// is), then created (201, with its secret, shown this once) or updated
/// (200; the hook URL and secret stay).
pub async fn put(
    state: &State,
    tool: &str,
    req: Request<RequestBody>,
) -> ApiResult<Response<Body>> {
    let body: PutTrigger = api::json_body(req).await?;
    let (status, shown) = set(state, tool, body).await?;
    Ok(body::json_response(status, &shown))
}

/// Creates (201, with the secret) or updates (200) the tool's trigger; the
/// API and the console both call this after deciding access.
pub async fn set(
    state: &State,
    tool: &str,
    body: PutTrigger,
) -> ApiResult<(StatusCode, ToolTriggerShown)> {
    let pattern = body.reference.filter(|r| !r.is_empty());
    if let Some(p) = &pattern {
        check_ref_pattern(p).map_err(BuildError::Invalid)?;
    }
    let request = BuildRequest {
        source_url: body.source_url,
        reference: None,
        image_name: body.image_name.filter(|n| !n.is_empty()),
        envvars: body.envvars,
        use_latest_versions: false,
    };
    state.builds.check_request(tool, &request).await?;
    state
        .builds
        .check_source(tool, &request.source_url, "HEAD")
        .await?;
    let now = now_ms();
    let (t, created) = state
        .storage
        .meta
        .put_trigger(TriggerRecord {
            id: new_hook_id(),
            tool: tool.to_owned(),
            source_url: request.source_url,
            ref_pattern: pattern,
            image_name: request.image_name,
            envvars: request.envvars,
            generation: 1,
            created_ms: now,
            updated_ms: now,
        })
        .await?;
    let mut info = vec![what_builds(&t)];
    let (status, secret) = if created {
        info.push(format!(
            "add a webhook for push events to {} with this secret; it is shown only now (POST /v1/tool/{tool}/trigger/rotate makes a new one)",
            hook_url(state, &t.id)
        ));
        (
            StatusCode::CREATED,
            Some(state.hooks.key.secret(&t.id, t.generation)),
        )
    } else {
        info.push("trigger updated; its hook URL and secret are unchanged".into());
        (StatusCode::OK, None)
    };
    tracing::info!(tool, hook = %t.id, created, "build trigger set");
    Ok((status, shown(state, &t, secret, info)))
}

/// `DELETE .../trigger`: deliveries to its hook are then unknown (404);
/// builds it queued stay.
pub async fn delete(state: &State, tool: &str) -> ApiResult<Response<Body>> {
    remove(state, tool).await?;
    Ok(body::json_response(
        StatusCode::OK,
        &ToolMessages {
            messages: Messages::info(vec![format!(
                "the build trigger of {tool} is deleted; remove the webhook from the forge too"
            )]),
        },
    ))
}

/// Deletes the tool's trigger (404 when it has none).
pub async fn remove(state: &State, tool: &str) -> ApiResult<()> {
    if !state.storage.meta.delete_trigger(tool).await? {
        return Err(no_trigger(tool));
    }
    tracing::info!(tool, "build trigger deleted");
    Ok(())
}

/// `POST .../trigger/rotate`: a new secret, shown this once; the old one
/// stops working at once.
pub async fn rotate(state: &State, tool: &str) -> ApiResult<Response<Body>> {
    Ok(body::json_response(
        StatusCode::OK,
        &rotate_secret(state, tool).await?,
    ))
}

/// A new secret for the tool's trigger (the answer holds it, once).
pub async fn rotate_secret(state: &State, tool: &str) -> ApiResult<ToolTriggerShown> {
    let t = state
        .storage
        .meta
        .rotate_trigger(tool)
        .await?
        .ok_or_else(|| no_trigger(tool))?;
    let secret = state.hooks.key.secret(&t.id, t.generation);
    tracing::info!(tool, hook = %t.id, generation = t.generation, "build trigger secret rotated");
    let info = vec![
        "a new secret: set it on the forge's webhook; the old one no longer works, and it is shown only now".into(),
    ];
    Ok(shown(state, &t, Some(secret), info))
}

/// A failed delivery's answer, after the address's throttle (see
/// `hooks::Hooks::failed`): `err`, or 429 when the address has too many
/// failed deliveries waiting for their answer.
async fn refused(state: &State, peer: IpAddr, err: ApiError) -> ApiError {
    match state.hooks.failed(peer).await {
        Ok(()) => err,
        Err(()) => ApiError::too_many(
            "logins_per_address",
            format!(
                "too many failed hook deliveries from {peer} at once ([limits] logins_per_address = {}); retry later",
                state.hooks.failures_per_address
            ),
        ),
    }
}

fn answer(status: StatusCode, a: HookAnswer) -> Response<Body> {
    body::json_response(status, &a)
}

fn ignored(reason: String) -> Response<Body> {
    answer(
        StatusCode::OK,
        HookAnswer {
            status: "ignored".into(),
            build_id: None,
            commit: None,
            replaced: None,
            messages: Messages::info(vec![reason.clone()]),
            reason: Some(reason),
        },
    )
}

/// `POST /v1/hooks/{id}`: a forge's delivery.
pub async fn deliver(
    state: &State,
    id: &str,
    req: Request<RequestBody>,
    peer: IpAddr,
) -> ApiResult<Response<Body>> {
    let found = if valid_hook_id(id) {
        state.storage.meta.trigger_by_hook(id).await?
    } else {
        None
    };
    let Some(t) = found else {
        super::drain(req.into_body()).await;
        return Err(refused(
            state,
            peer,
            ApiError::not_found(Code::NameUnknown, "no such hook"),
        )
        .await);
    };
    let headers = req.headers().clone();
    let raw = api::read_body(req, MAX_HOOK_BODY).await?;
    let Some((forge, event)) = payload::identify(&headers) else {
        return Err(ApiError::bad_request(
            Code::Unsupported,
            "not a forge's webhook: it has no X-Gitlab-Event, X-GitHub-Event, X-Gitea-Event or X-Forgejo-Event header",
        ));
    };
    let secret = state.hooks.key.secret(&t.id, t.generation);
    let header = |name: &str| headers.get(name).map(|v| v.as_bytes());
    let proof = match forge {
        Forge::GitLab => check_token(header("x-gitlab-token"), &secret),
        Forge::Hub => check_hub_signature(header("x-hub-signature-256"), &secret, &raw),
    };
    let expected = match forge {
        Forge::GitLab => "X-Gitlab-Token (the webhook's secret token)",
        Forge::Hub => "X-Hub-Signature-256 (set the webhook's secret)",
    };
    match proof {
        Proof::Valid => {}
        Proof::Missing => {
            tracing::info!(tool = %t.tool, hook = %t.id, %peer, "hook delivery without a signature");
            return Err(refused(
                state,
                peer,
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    Code::Unauthorized,
                    format!("the delivery carries no {expected}"),
                )
                // A 401 names how to authenticate: here, the forge's header.
                .with_header_text(
                    header::WWW_AUTHENTICATE,
                    format!(
                        "Webhook realm=\"berth build trigger\", header=\"{}\"",
                        match forge {
                            Forge::GitLab => "X-Gitlab-Token",
                            Forge::Hub => "X-Hub-Signature-256",
                        }
                    ),
                ),
            )
            .await);
        }
        Proof::Wrong => {
            tracing::info!(tool = %t.tool, hook = %t.id, %peer, "hook delivery with a wrong signature");
            return Err(refused(
                state,
                peer,
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    Code::Denied,
                    format!("the delivery's {expected} does not match the trigger's secret"),
                ),
            )
            .await);
        }
    }
    if let Err(wait) = state.hooks.take(&t.tool) {
        let mut e = ApiError::too_many(
            "hooks_per_tool_per_minute",
            format!(
                "tool {} received more than {} hook deliveries in a minute ([limits] hooks_per_tool_per_minute); retry in {wait} s",
                t.tool, state.hooks.per_tool_per_minute
            ),
        );
        // When a delivery frees, rather than too_many's "1".
        e.headers.retain(|(name, _)| name != header::RETRY_AFTER);
        return Err(e.with_header_text(header::RETRY_AFTER, wait));
    }
    match payload::event_kind(forge, &event) {
        EventKind::Push => {}
        EventKind::Ping => {
            return Ok(answer(
                StatusCode::OK,
                HookAnswer {
                    status: "pong".into(),
                    build_id: None,
                    commit: None,
                    replaced: None,
                    reason: None,
                    messages: Messages::info(vec![format!(
                        "the hook of {}'s build trigger is set up; {}",
                        t.tool,
                        what_builds(&t)
                    )]),
                },
            ))
        }
        EventKind::Other => {
            return Ok(ignored(format!(
                "{} events start no builds; only pushes do",
                berth_builds::source::shown(&event)
            )))
        }
    }
    let push = payload::parse_push(forge, &raw).map_err(|e| {
        ApiError::bad_request(
            Code::Unsupported,
            format!("the push payload is malformed: {e}"),
        )
    })?;
    if !push
        .repository_urls
        .iter()
        .any(|u| same_repository(u, &t.source_url))
    {
        let named = push
            .repository_urls
            .first()
            .map(|u| berth_builds::source::shown(u))
            .unwrap_or_else(|| "no repository".into());
        tracing::info!(tool = %t.tool, hook = %t.id, payload = %named, "hook delivery for another repository");
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            Code::Denied,
            format!(
                "the push is for {named}, not for the trigger's source {}",
                berth_builds::source::shown(&t.source_url)
            ),
        ));
    }
    if push.deleted {
        return Ok(ignored(format!(
            "the push deleted {}; nothing to build",
            push.reference
        )));
    }
    if !ref_matches(
        t.ref_pattern.as_deref(),
        &push.reference,
        push.default_branch.as_deref(),
    ) {
        let wanted = match (&t.ref_pattern, &push.default_branch) {
            (Some(p), _) => format!("the trigger's ref {p:?}"),
            (None, Some(b)) => format!("the default branch {b:?}"),
            (None, None) => {
                "the default branch (the payload does not name it; set the trigger's ref)".into()
            }
        };
        return Ok(ignored(format!(
            "{} does not match {wanted}",
            push.reference
        )));
    }
    let request = BuildRequest {
        source_url: t.source_url.clone(),
        reference: None,
        image_name: t.image_name.clone(),
        envvars: t.envvars.clone(),
        use_latest_versions: false,
    };
    let outcome = state
        .builds
        .start_push(
            &t.tool,
            request,
            Push {
                trigger_id: t.id.clone(),
                reference: push.reference.clone(),
                commit: push.after.clone(),
                pusher: push.pusher.clone(),
            },
        )
        .await?;
    let (build, replaced) = match outcome {
        PushOutcome::Replay => {
            tracing::info!(tool = %t.tool, hook = %t.id, commit = %push.after, "hook delivery replayed a seen commit");
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                Code::Denied,
                format!(
                    "commit {} was already built or queued by this trigger; nothing was started (start a build by hand to build it again)",
                    push.after
                ),
            ));
        }
        PushOutcome::Queued(b) => (b, None),
        PushOutcome::Coalesced { build, replaced } => (build, Some(replaced)),
    };
    tracing::info!(tool = %t.tool, hook = %t.id, build = %build.id, commit = %push.after, reference = %push.reference, coalesced = replaced.is_some(), "push queued a build");
    let info = match &replaced {
        None => format!(
            "build {} queued for {} at {}",
            build.id, push.reference, push.after
        ),
        Some(old) => format!(
            "build {} (still waiting) now builds {} instead of {old}",
            build.id, push.after
        ),
    };
    Ok(answer(
        StatusCode::ACCEPTED,
        HookAnswer {
            status: if replaced.is_some() {
                "coalesced"
            } else {
                "queued"
            }
            .into(),
            build_id: Some(build.id),
            commit: Some(push.after),
            replaced,
            reason: None,
            messages: Messages::info(vec![info]),
        },
    ))
}
