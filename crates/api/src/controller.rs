//! The orchestration routes: `/api/v1/controller`, `/api/v1/models/…` for
//! users and `/agent/v1/…` for machine agents (per-machine token).

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use kumo_controller::{Controller, ControllerError};
use kumo_model::api::ApiErrorDetail;
use kumo_model::orchestra::*;
use kumo_region::Region;
use kumo_uniter::HookCommit;
use serde::Deserialize;

use crate::{bearer, ApiError, ApiJson, ApiQuery};

#[derive(Clone)]
pub struct Ctl {
    pub region: Region,
    pub controller: Controller,
}

impl From<ControllerError> for ApiError {
    fn from(e: ControllerError) -> Self {
        let code = e.code();
        let status = match code {
            "invalid_field" | "invalid_config" | "invalid_charm" | "invalid_bundle"
            | "invalid_relation" => StatusCode::BAD_REQUEST,
            "not_found" => StatusCode::NOT_FOUND,
            "already_exists" | "conflict" | "not_bootstrapped" => StatusCode::CONFLICT,
            "unauthorized" => StatusCode::UNAUTHORIZED,
            "provider_failed" => StatusCode::BAD_GATEWAY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            let mut chain = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                chain.push_str(&format!(": {s}"));
                src = s.source();
            }
            tracing::error!("{chain}");
            "internal error; see the region log".to_string()
        } else {
            e.to_string()
        };
        ApiError {
            status,
            body: ApiErrorDetail {
                code: code.into(),
                message,
                field: e.field().map(str::to_string),
                allowed_actions: Vec::new(),
            },
        }
    }
}

/// Any authenticated user.
struct User(kumo_region::Actor);

impl FromRequestParts<Ctl> for User {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, s: &Ctl) -> Result<Self, ApiError> {
        let key =
            bearer(parts).ok_or_else(|| ApiError::from(kumo_region::RegionError::Unauthorized))?;
        Ok(User(s.region.authenticate(key).await?))
    }
}

/// An agent's token.
struct AgentToken(String);

impl FromRequestParts<Ctl> for AgentToken {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &Ctl) -> Result<Self, ApiError> {
        bearer(parts)
            .map(|t| AgentToken(t.to_string()))
            .ok_or_else(|| ControllerError::Unauthorized("(no token)".into()).into())
    }
}

type R<T> = Result<T, ApiError>;

pub fn routes(ctl: Ctl) -> Router {
    let api = Router::new()
        .route("/api/v1/controller", get(show_bootstrap).put(bootstrap))
        .route(
            "/api/v1/charms",
            post(upload_charm).layer(axum::extract::DefaultBodyLimit::max(64 << 20)),
        )
        .route("/api/v1/models", get(models).post(add_model))
        .route("/api/v1/models/{m}", delete(destroy_model))
        .route("/api/v1/models/{m}/status", get(status))
        .route("/api/v1/models/{m}/machines", post(add_machines))
        .route("/api/v1/models/{m}/machines/{*id}", delete(remove_machine))
        .route("/api/v1/models/{m}/applications", post(deploy))
        .route(
            "/api/v1/models/{m}/applications/{app}",
            delete(remove_application),
        )
        .route(
            "/api/v1/models/{m}/applications/{app}/units",
            post(add_units),
        )
        .route(
            "/api/v1/models/{m}/applications/{app}/config",
            get(config).patch(set_config),
        )
        .route(
            "/api/v1/models/{m}/applications/{app}/expose",
            post(expose).delete(unexpose),
        )
        .route(
            "/api/v1/models/{m}/applications/{app}/charm",
            axum::routing::put(refresh),
        )
        .route(
            "/api/v1/models/{m}/units/{app}/{n}",
            get(show_unit).delete(remove_unit),
        )
        .route("/api/v1/models/{m}/units/{app}/{n}/resolve", post(resolve))
        .route(
            "/api/v1/models/{m}/units/{app}/{n}/actions",
            post(run_action),
        )
        .route("/api/v1/models/{m}/actions/{id}", get(show_action))
        .route("/api/v1/models/{m}/exec", post(exec))
        .route("/api/v1/models/{m}/relations", post(relate))
        .route("/api/v1/models/{m}/relations/remove", post(remove_relation))
        .route("/api/v1/models/{m}/logs", get(logs))
        .route("/api/v1/models/{m}/address/{*target}", get(address))
        .route(
            "/api/v1/models/{m}/bundle",
            post(deploy_bundle).layer(axum::extract::DefaultBodyLimit::max(8 << 20)),
        )
        .route(
            "/api/v1/models/{m}/bundle/diff",
            post(diff_bundle).layer(axum::extract::DefaultBodyLimit::max(8 << 20)),
        )
        .route("/api/v1/models/{m}/bundle/export", get(export_bundle));
    let agent = Router::new().route(
        "/agent/v1/models/{m}/machines/{*rest}",
        get(agent_get)
            .post(agent_post)
            .layer(axum::extract::DefaultBodyLimit::max(16 << 20)),
    );
    api.merge(agent).with_state(ctl)
}

async fn show_bootstrap(State(s): State<Ctl>, _u: User) -> R<Response> {
    match s.controller.bootstrap_config() {
        Some(b) => Ok(Json(b).into_response()),
        None => Err(ControllerError::NotBootstrapped.into()),
    }
}

async fn bootstrap(
    State(s): State<Ctl>,
    _u: User,
    ApiJson(b): ApiJson<Bootstrap>,
) -> R<impl IntoResponse> {
    s.controller.bootstrap(b).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn upload_charm(
    State(s): State<Ctl>,
    _u: User,
    body: axum::body::Bytes,
) -> R<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.controller.upload_charm(&body)?)))
}

async fn models(State(s): State<Ctl>, _u: User) -> R<impl IntoResponse> {
    Ok(Json(s.controller.models().await))
}

async fn add_model(
    State(s): State<Ctl>,
    User(actor): User,
    ApiJson(b): ApiJson<CreateModel>,
) -> R<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(
            s.controller
                .add_model(&b.name, b.provider.as_deref(), Some(&actor.username))
                .await?,
        ),
    ))
}

async fn destroy_model(
    State(s): State<Ctl>,
    _u: User,
    Path(m): Path<String>,
) -> R<impl IntoResponse> {
    s.controller.destroy_model(&m).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn status(State(s): State<Ctl>, _u: User, Path(m): Path<String>) -> R<impl IntoResponse> {
    Ok(Json(s.controller.status(&m).await?))
}

async fn add_machines(
    State(s): State<Ctl>,
    _u: User,
    Path(m): Path<String>,
    ApiJson(b): ApiJson<AddMachines>,
) -> R<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(s.controller.add_machines(&m, &b).await?),
    ))
}

async fn deploy(
    State(s): State<Ctl>,
    _u: User,
    Path(m): Path<String>,
    ApiJson(b): ApiJson<Deploy>,
) -> R<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(s.controller.deploy(&m, &b).await?),
    ))
}

async fn remove_application(
    State(s): State<Ctl>,
    _u: User,
    Path((m, app)): Path<(String, String)>,
) -> R<impl IntoResponse> {
    s.controller.remove_application(&m, &app).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn add_units(
    State(s): State<Ctl>,
    _u: User,
    Path((m, app)): Path<(String, String)>,
    ApiJson(b): ApiJson<AddUnits>,
) -> R<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(s.controller.add_units(&m, &app, &b).await?),
    ))
}

async fn config(
    State(s): State<Ctl>,
    _u: User,
    Path((m, app)): Path<(String, String)>,
) -> R<impl IntoResponse> {
    Ok(Json(s.controller.config(&m, &app).await?))
}

async fn set_config(
    State(s): State<Ctl>,
    _u: User,
    Path((m, app)): Path<(String, String)>,
    ApiJson(b): ApiJson<SetConfig>,
) -> R<impl IntoResponse> {
    s.controller.set_config(&m, &app, &b).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct Refresh {
    charm: String,
}

async fn refresh(
    State(s): State<Ctl>,
    _u: User,
    Path((m, app)): Path<(String, String)>,
    ApiJson(b): ApiJson<Refresh>,
) -> R<impl IntoResponse> {
    s.controller.refresh(&m, &app, &b.charm).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn expose(
    State(s): State<Ctl>,
    _u: User,
    Path((m, app)): Path<(String, String)>,
) -> R<impl IntoResponse> {
    s.controller.expose(&m, &app, true).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn unexpose(
    State(s): State<Ctl>,
    _u: User,
    Path((m, app)): Path<(String, String)>,
) -> R<impl IntoResponse> {
    s.controller.expose(&m, &app, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn show_unit(
    State(s): State<Ctl>,
    _u: User,
    Path((m, app, n)): Path<(String, String, String)>,
) -> R<impl IntoResponse> {
    Ok(Json(
        s.controller.show_unit(&m, &format!("{app}/{n}")).await?,
    ))
}

async fn remove_machine(
    State(s): State<Ctl>,
    _u: User,
    Path((m, id)): Path<(String, String)>,
) -> R<impl IntoResponse> {
    s.controller.remove_machine(&m, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn remove_unit(
    State(s): State<Ctl>,
    _u: User,
    Path((m, app, n)): Path<(String, String, String)>,
) -> R<impl IntoResponse> {
    s.controller.remove_unit(&m, &format!("{app}/{n}")).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn resolve(
    State(s): State<Ctl>,
    _u: User,
    Path((m, app, n)): Path<(String, String, String)>,
    ApiJson(b): ApiJson<Resolve>,
) -> R<impl IntoResponse> {
    s.controller
        .resolve(&m, &format!("{app}/{n}"), b.retry)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn run_action(
    State(s): State<Ctl>,
    _u: User,
    Path((m, app, n)): Path<(String, String, String)>,
    ApiJson(b): ApiJson<RunAction>,
) -> R<impl IntoResponse> {
    let id = s
        .controller
        .run_action(&m, &format!("{app}/{n}"), &b)
        .await?;
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id }))))
}

async fn show_action(
    State(s): State<Ctl>,
    _u: User,
    Path((m, id)): Path<(String, u64)>,
) -> R<impl IntoResponse> {
    Ok(Json(s.controller.action(&m, id).await?))
}

async fn exec(
    State(s): State<Ctl>,
    _u: User,
    Path(m): Path<String>,
    ApiJson(b): ApiJson<Exec>,
) -> R<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.controller.exec(&m, &b).await?)))
}

async fn relate(
    State(s): State<Ctl>,
    _u: User,
    Path(m): Path<String>,
    ApiJson(b): ApiJson<Relate>,
) -> R<impl IntoResponse> {
    let id = s.controller.relate(&m, &b).await?;
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id }))))
}

async fn remove_relation(
    State(s): State<Ctl>,
    _u: User,
    Path(m): Path<String>,
    ApiJson(b): ApiJson<Relate>,
) -> R<impl IntoResponse> {
    s.controller.remove_relation(&m, &b).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct LogQuery {
    #[serde(default)]
    after: i64,
    #[serde(default = "default_limit")]
    limit: i64,
}

fn default_limit() -> i64 {
    1000
}

async fn logs(
    State(s): State<Ctl>,
    _u: User,
    Path(m): Path<String>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> R<impl IntoResponse> {
    Ok(Json(
        s.controller
            .logs(&m, q.after, q.limit.clamp(1, 10_000))
            .await?,
    ))
}

async fn address(
    State(s): State<Ctl>,
    _u: User,
    Path((m, target)): Path<(String, String)>,
) -> R<impl IntoResponse> {
    Ok(Json(
        serde_json::json!({ "address": s.controller.machine_address(&m, &target).await? }),
    ))
}

async fn deploy_bundle(
    State(s): State<Ctl>,
    _u: User,
    Path(m): Path<String>,
    ApiJson(b): ApiJson<BundleRequest>,
) -> R<impl IntoResponse> {
    Ok(Json(s.controller.deploy_bundle(&m, &b).await?))
}

async fn diff_bundle(
    State(s): State<Ctl>,
    _u: User,
    Path(m): Path<String>,
    ApiJson(b): ApiJson<BundleRequest>,
) -> R<impl IntoResponse> {
    Ok(Json(s.controller.diff_bundle(&m, &b).await?))
}

async fn export_bundle(
    State(s): State<Ctl>,
    _u: User,
    Path(m): Path<String>,
) -> R<impl IntoResponse> {
    Ok(s.controller.export_bundle(&m).await?)
}

// ---- agents ---------------------------------------------------------------
// Machine ids contain slashes (`0/lxd/1`), so the agent routes take the
// rest of the path and split off the verb at the end.

#[derive(Deserialize)]
struct ViewQuery {
    since: Option<String>,
}

fn split_rest(rest: &str) -> Option<(&str, &str)> {
    for verb in [
        "/view", "/commit", "/running", "/secret", "/status", "/charms/",
    ] {
        if let Some(i) = rest.find(verb) {
            return Some((&rest[..i], &rest[i + 1..]));
        }
    }
    None
}

fn no_route() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such agent route".into(),
    )
}

async fn agent_get(
    State(s): State<Ctl>,
    AgentToken(t): AgentToken,
    Path((m, rest)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<ViewQuery>,
    req: axum::extract::Request,
) -> R<Response> {
    let (machine, verb) = split_rest(&rest).ok_or_else(no_route)?;
    if verb == "view" {
        let view = s
            .controller
            .agent_view(&m, machine, &t, q.since.as_deref())
            .await?;
        return Ok(Json(view).into_response());
    }
    if let Some(sha) = verb.strip_prefix("charms/") {
        use tower::ServiceExt;
        let path = s.controller.agent_charm(&m, machine, &t, sha).await?;
        let res = tower_http::services::ServeFile::new(path)
            .oneshot(req)
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("serving charm {sha}: {e}"),
                )
            })?;
        return Ok(res.map(axum::body::Body::new));
    }
    Err(no_route())
}

#[derive(Deserialize)]
struct StatusReport {
    unit: String,
    status: kumo_uniter::WorkloadStatus,
}

#[derive(Deserialize)]
struct SecretRequest {
    unit: String,
    id: String,
}

#[derive(Deserialize)]
struct Running {
    unit: String,
    hook: String,
}

async fn agent_post(
    State(s): State<Ctl>,
    AgentToken(t): AgentToken,
    Path((m, rest)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> R<Response> {
    let (machine, verb) = split_rest(&rest).ok_or_else(no_route)?;
    let bad = |e: serde_json::Error| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", e.to_string())
    };
    match verb {
        "commit" => {
            let c: HookCommit = serde_json::from_slice(&body).map_err(bad)?;
            Ok(Json(s.controller.agent_commit(&m, machine, &t, &c).await?).into_response())
        }
        "secret" => {
            let r: SecretRequest = serde_json::from_slice(&body).map_err(bad)?;
            let value = s
                .controller
                .agent_secret(&m, machine, &t, &r.unit, &r.id)
                .await?;
            Ok(Json(serde_json::json!({ "value": value })).into_response())
        }
        "status" => {
            let r: StatusReport = serde_json::from_slice(&body).map_err(bad)?;
            s.controller
                .agent_status(&m, machine, &t, &r.unit, r.status)
                .await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        "running" => {
            let r: Running = serde_json::from_slice(&body).map_err(bad)?;
            s.controller
                .agent_running(&m, machine, &t, &r.unit, &r.hook)
                .await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        _ => Err(no_route()),
    }
}
