//! kumo's REST API: `/api/v1` for users (API-key bearer auth), `/metadata/v1`
//! for booted machines (per-machine token), `/metrics` and `/healthz`.
//!
//! Handlers are thin: they authenticate, decode, call one region method and
//! encode. Every failure is a JSON body `{"error": {"code", "message",
//! "field"?, "allowed_actions"?}}` whose `code` is stable.

pub mod controller;
mod error;

use std::future::Future;

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kumo_model::api::{
    ActionOptions, AddMachine, AllocateRequest, CreateUser, EnlistRequest, Group, ImageUpload,
    MachineFilter, NewSshKey, StatusReport, Tag, UpdateMachine, UpdateTagMachines,
};
use kumo_model::scripts::{NewScript, ScriptResultReport};
use kumo_model::Inventory;
use kumo_region::{Actor, Region, RegionError};
use kumo_store::GroupKind;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

pub use error::ApiError;

/// A JSON body whose decoding errors become 400 `invalid_body` answers
/// that say what was wrong and where.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rej) => Err(ApiError::new(rej.status(), "invalid_body", rej.body_text())),
        }
    }
}

/// Query strings, with the same treatment.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(ApiQuery(v)),
            Err(rej) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                rej.body_text(),
            )),
        }
    }
}

fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// The authenticated user of an `/api/v1` request.
pub struct User(pub Actor);

impl FromRequestParts<Region> for User {
    type Rejection = ApiError;
    fn from_request_parts(
        parts: &mut Parts,
        region: &Region,
    ) -> impl Future<Output = Result<Self, ApiError>> + Send {
        let key = bearer(parts).map(str::to_owned);
        let region = region.clone();
        async move {
            let key = key.ok_or_else(|| ApiError::from(RegionError::Unauthorized))?;
            Ok(User(region.authenticate(&key).await?))
        }
    }
}

/// The token of a `/metadata/v1` request.
pub struct MachineToken(pub String);

impl<S: Send + Sync> FromRequestParts<S> for MachineToken {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        bearer(parts)
            .map(|t| MachineToken(t.to_owned()))
            .ok_or_else(|| RegionError::Unauthorized.into())
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Script bodies and captured output are each up to 1 MiB of text, which
/// JSON escaping may grow several times over (a control character becomes
/// `\u00XX`); axum's default limit of 2 MB would refuse some.
pub const SCRIPT_BODY_LIMIT: usize = 16 << 20;

#[derive(Deserialize)]
struct Limit {
    #[serde(default = "default_limit")]
    limit: i64,
    #[serde(default)]
    machine: Option<String>,
}

fn default_limit() -> i64 {
    100
}

pub fn router(region: Region) -> Router {
    router_with(region, None)
}

/// The region's routes and, when the region hosts the controller, the
/// orchestration routes (`kumo bootstrap` in the region process).
pub fn router_with(region: Region, controller: Option<kumo_controller::Controller>) -> Router {
    let orchestration = controller.map(|c| {
        controller::routes(controller::Ctl {
            region: region.clone(),
            controller: c,
        })
    });
    let api = Router::new()
        .route("/version", get(version))
        .route("/whoami", get(whoami))
        .route("/machines", get(list_machines).post(add_machine))
        .route("/machines/allocate", post(allocate))
        .route(
            "/machines/{id}",
            get(show_machine)
                .patch(update_machine)
                .delete(delete_machine),
        )
        .route("/machines/{id}/actions/{action}", post(machine_action))
        .route("/machines/{id}/events", get(machine_events))
        .route("/machines/{id}/token", get(machine_token))
        .route("/events", get(events))
        .route("/audit", get(audit))
        .route("/tags", get(list_tags).post(create_tag))
        .route(
            "/tags/{name}",
            get(show_tag).put(update_tag).delete(delete_tag),
        )
        .route("/tags/{name}/machines", post(tag_machines))
        .route(
            "/zones",
            get(|s, u| list_groups(s, u, GroupKind::Zone))
                .post(|s, u, b| create_group(s, u, b, GroupKind::Zone)),
        )
        .route(
            "/zones/{name}",
            axum::routing::delete(|s, u, p| delete_group(s, u, p, GroupKind::Zone)),
        )
        .route(
            "/pools",
            get(|s, u| list_groups(s, u, GroupKind::Pool))
                .post(|s, u, b| create_group(s, u, b, GroupKind::Pool)),
        )
        .route(
            "/pools/{name}",
            axum::routing::delete(|s, u, p| delete_group(s, u, p, GroupKind::Pool)),
        )
        .route("/users", get(list_users).post(create_user))
        .route("/users/{name}/api-keys", post(create_api_key))
        .route("/power-types", get(power_types))
        .route("/fabrics", get(list_fabrics).post(create_fabric))
        .route("/fabrics/{name}", axum::routing::delete(delete_fabric))
        .route("/vlans", get(list_vlans).post(create_vlan))
        .route(
            "/vlans/{fabric}/{vid}",
            axum::routing::put(update_vlan).delete(delete_vlan),
        )
        .route("/subnets", get(list_subnets).post(create_subnet))
        .route(
            "/subnets/{network}/{prefix}",
            get(show_subnet).delete(delete_subnet),
        )
        .route("/ipranges", get(list_ranges).post(create_range))
        .route(
            "/ipranges/{network}/{prefix}/{start}",
            axum::routing::delete(delete_range),
        )
        .route("/domains", get(list_domains).post(create_domain))
        .route("/domains/{name}", axum::routing::delete(delete_domain))
        .route(
            "/dns-records",
            get(list_records).post(create_record).delete(delete_record),
        )
        .route(
            "/machines/{id}/addresses",
            get(machine_addresses).post(link_machine),
        )
        .route(
            "/machines/{id}/addresses/{ip}",
            axum::routing::delete(unlink_machine),
        )
        .route("/images", get(list_images))
        .route(
            "/images/{name}",
            get(show_image)
                .put(upload_image)
                .delete(delete_image)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/images/{name}/file", get(image_file))
        .route("/ssh-keys", get(list_ssh_keys).post(add_ssh_key))
        .route(
            "/ssh-keys/{fingerprint}",
            axum::routing::delete(delete_ssh_key),
        )
        .route(
            "/scripts",
            get(list_scripts)
                .post(add_script)
                .layer(axum::extract::DefaultBodyLimit::max(SCRIPT_BODY_LIMIT)),
        )
        .route("/scripts/{name}", get(show_script).delete(delete_script))
        .route("/machines/{id}/script-results", get(machine_script_results))
        .route(
            "/machines/{id}/script-results/{name}",
            get(machine_script_result),
        )
        .route("/rack/config", get(rack_config))
        .route("/rack/boot-events", post(rack_boot_event))
        .route("/rack/rogue-dhcp", get(rogue_dhcp).post(report_rogue_dhcp));
    let metadata = Router::new()
        .route("/instructions", get(instructions))
        .route("/status", post(report_status))
        .route("/inventory", post(report_inventory))
        .route("/cloud-init", get(cloud_init))
        .route("/installed", post(installed))
        .route("/scripts", get(task_scripts))
        .route(
            "/script-results",
            post(report_script_result)
                .layer(axum::extract::DefaultBodyLimit::max(SCRIPT_BODY_LIMIT)),
        )
        .route("/enlist", post(enlist));
    let region_routes = Router::new()
        .nest("/api/v1", api)
        .nest("/metadata/v1", metadata)
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint".into(),
            )
        })
        .layer(middleware::from_fn_with_state(
            region.clone(),
            count_requests,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(region);
    match orchestration {
        Some(o) => o.merge(region_routes),
        None => region_routes,
    }
}

async fn count_requests(State(region): State<Region>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let resp = next.run(req).await;
    let labels = kumo_region::metrics::ApiLabels {
        method,
        status: resp.status().as_u16(),
    };
    region.metrics().api_requests.get_or_create(&labels).inc();
    resp
}

async fn version() -> impl IntoResponse {
    Json(json!({"version": env!("CARGO_PKG_VERSION"), "api": kumo_model::api::API_VERSION}))
}

async fn whoami(User(actor): User) -> impl IntoResponse {
    Json(json!({"username": actor.username, "admin": actor.admin}))
}

async fn metrics(State(region): State<Region>) -> ApiResult<Response> {
    region.refresh_gauges().await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        region.metrics().render(),
    )
        .into_response())
}

async fn list_machines(
    State(r): State<Region>,
    _u: User,
    ApiQuery(f): ApiQuery<MachineFilter>,
) -> ApiResult<impl IntoResponse> {
    let ms = r.list_machines(&f).await?;
    Ok(Json(ms.into_iter().map(|m| r.view(m)).collect::<Vec<_>>()))
}

async fn add_machine(
    State(r): State<Region>,
    User(a): User,
    ApiJson(req): ApiJson<AddMachine>,
) -> ApiResult<impl IntoResponse> {
    let m = r.add_machine(&a, req).await?;
    Ok((StatusCode::CREATED, Json(r.view(m))))
}

async fn show_machine(
    State(r): State<Region>,
    _u: User,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(r.view(r.machine(&id).await?)))
}

async fn update_machine(
    State(r): State<Region>,
    User(a): User,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdateMachine>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(r.view(r.update_machine(&a, &id, req).await?)))
}

async fn delete_machine(
    State(r): State<Region>,
    User(a): User,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    r.delete_machine(&a, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn machine_action(
    State(r): State<Region>,
    User(a): User,
    Path((id, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<impl IntoResponse> {
    // The body is optional: most actions take no options.
    let opts: ActionOptions =
        if body.iter().all(u8::is_ascii_whitespace) || body.trim_ascii() == b"null" {
            ActionOptions::default()
        } else {
            serde_json::from_slice(&body).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_body",
                    format!("action options: {e}"),
                )
            })?
        };
    Ok(Json(
        r.view(r.machine_action(&a, &id, &action, opts).await?),
    ))
}

async fn allocate(
    State(r): State<Region>,
    User(a): User,
    ApiJson(req): ApiJson<AllocateRequest>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(r.view(r.allocate(&a, req).await?)))
}

async fn machine_events(
    State(r): State<Region>,
    _u: User,
    Path(id): Path<String>,
    ApiQuery(l): ApiQuery<Limit>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(r.machine_events(Some(&id), l.limit).await?))
}

/// The token a booting machine uses for `/metadata/v1`: the rack embeds it
/// in the machine's boot configuration, so only admins may read it.
async fn machine_token(
    State(r): State<Region>,
    User(a): User,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    if !a.admin {
        return Err(RegionError::Forbidden(format!(
            "reading a machine token needs an admin user; {} is not one",
            a.username
        ))
        .into());
    }
    let m = r.machine(&id).await?;
    let token = r.machine_token(m.system_id.as_str()).await?;
    Ok(Json(json!({"system_id": m.system_id, "token": token})))
}

async fn events(
    State(r): State<Region>,
    _u: User,
    ApiQuery(l): ApiQuery<Limit>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(r.machine_events(l.machine.as_deref(), l.limit).await?))
}

async fn audit(
    State(r): State<Region>,
    User(a): User,
    ApiQuery(l): ApiQuery<Limit>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(r.audit_events(&a, l.limit).await?))
}

async fn list_tags(State(r): State<Region>, _u: User) -> ApiResult<impl IntoResponse> {
    Ok(Json(r.list_tags().await?))
}

async fn show_tag(
    State(r): State<Region>,
    _u: User,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(r.tag(&name).await?))
}

async fn create_tag(
    State(r): State<Region>,
    User(a): User,
    ApiJson(t): ApiJson<Tag>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(r.create_tag(&a, t).await?)))
}

async fn update_tag(
    State(r): State<Region>,
    User(a): User,
    Path(name): Path<String>,
    ApiJson(mut t): ApiJson<Tag>,
) -> ApiResult<impl IntoResponse> {
    t.name = name;
    Ok(Json(r.update_tag(&a, t).await?))
}

async fn delete_tag(
    State(r): State<Region>,
    User(a): User,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    r.delete_tag(&a, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn tag_machines(
    State(r): State<Region>,
    User(a): User,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<UpdateTagMachines>,
) -> ApiResult<impl IntoResponse> {
    r.tag_machines(&a, &name, req).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_groups(
    State(r): State<Region>,
    _u: User,
    kind: GroupKind,
) -> ApiResult<Json<Vec<Group>>> {
    Ok(Json(r.list_groups(kind).await?))
}

async fn create_group(
    State(r): State<Region>,
    User(a): User,
    ApiJson(g): ApiJson<Group>,
    kind: GroupKind,
) -> ApiResult<(StatusCode, Json<Group>)> {
    Ok((
        StatusCode::CREATED,
        Json(r.create_group(&a, kind, g).await?),
    ))
}

async fn delete_group(
    State(r): State<Region>,
    User(a): User,
    Path(name): Path<String>,
    kind: GroupKind,
) -> ApiResult<StatusCode> {
    r.delete_group(&a, kind, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_users(State(r): State<Region>, _u: User) -> ApiResult<impl IntoResponse> {
    Ok(Json(r.list_users().await?))
}

async fn create_user(
    State(r): State<Region>,
    User(a): User,
    ApiJson(req): ApiJson<CreateUser>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(r.create_user(&a, req).await?)))
}

async fn create_api_key(
    State(r): State<Region>,
    User(a): User,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(r.create_api_key(&a, &name).await?),
    ))
}

async fn power_types(_u: User) -> impl IntoResponse {
    let types: Vec<_> = kumo_power::POWER_TYPES
        .iter()
        .map(|t| {
            let params: Vec<_> = kumo_power::parameter_specs(t)
                .unwrap_or(&[])
                .iter()
                .map(|p| json!({"name": p.name, "required": p.required, "secret": p.secret, "description": p.description, "default": p.default}))
                .collect();
            json!({"name": t, "parameters": params})
        })
        .collect();
    Json(types)
}

async fn instructions(
    State(r): State<Region>,
    MachineToken(t): MachineToken,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(r.instructions(&t).await?))
}

async fn report_status(
    State(r): State<Region>,
    MachineToken(t): MachineToken,
    ApiJson(rep): ApiJson<StatusReport>,
) -> ApiResult<impl IntoResponse> {
    let m = r.machine_report(&t, rep).await?;
    Ok(Json(json!({"system_id": m.system_id, "status": m.status})))
}

async fn report_inventory(
    State(r): State<Region>,
    MachineToken(t): MachineToken,
    ApiJson(inv): ApiJson<Inventory>,
) -> ApiResult<impl IntoResponse> {
    let m = r.machine_inventory(&t, inv).await?;
    Ok(Json(json!({"system_id": m.system_id, "status": m.status})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BootEvent {
    system_id: String,
    message: String,
}

/// A rack saw a machine boot (it fetched its iPXE script).
async fn rack_boot_event(
    State(r): State<Region>,
    User(a): User,
    ApiJson(e): ApiJson<BootEvent>,
) -> ApiResult<impl IntoResponse> {
    r.record_boot_event(&a, &e.system_id, &e.message).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- images and SSH keys --------------------------------------------------

async fn list_images(State(r): State<Region>, _u: User) -> ApiResult<impl IntoResponse> {
    Ok(Json(r.images().await?))
}

async fn show_image(
    State(r): State<Region>,
    _u: User,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(r.image(&name).await?))
}

/// The body is the image file itself, streamed to disk; the query says
/// what it is (`sha256` is required and checked).
async fn upload_image(
    State(r): State<Region>,
    User(a): User,
    Path(name): Path<String>,
    ApiQuery(mut meta): ApiQuery<ImageUpload>,
    body: axum::body::Body,
) -> ApiResult<impl IntoResponse> {
    use futures_util::TryStreamExt;
    meta.name = name;
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let reader = tokio_util::io::StreamReader::new(stream);
    let image = r.upload_image(&a, meta, reader).await?;
    Ok((StatusCode::CREATED, Json(image)))
}

async fn delete_image(
    State(r): State<Region>,
    User(a): User,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    r.delete_image(&a, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The image file, with Range support, for racks to mirror.
async fn image_file(
    State(r): State<Region>,
    _u: User,
    Path(name): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    use tower::ServiceExt;
    let (image, path) = r.image_file(&name).await?;
    let mut res = tower_http::services::ServeFile::new(path)
        .oneshot(req)
        .await
        .map_err(|e| RegionError::Internal(format!("serving image {name}: {e}")))?;
    if let Ok(v) = axum::http::HeaderValue::from_str(&image.sha256) {
        res.headers_mut().insert("x-kumo-sha256", v);
    }
    Ok(res.map(axum::body::Body::new))
}

async fn list_ssh_keys(State(r): State<Region>, User(a): User) -> ApiResult<impl IntoResponse> {
    Ok(Json(r.ssh_keys(&a).await?))
}

async fn add_ssh_key(
    State(r): State<Region>,
    User(a): User,
    ApiJson(k): ApiJson<NewSshKey>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(r.add_ssh_key(&a, &k.key).await?)))
}

async fn delete_ssh_key(
    State(r): State<Region>,
    User(a): User,
    Path(fingerprint): Path<String>,
) -> ApiResult<impl IntoResponse> {
    r.delete_ssh_key(&a, &fingerprint).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- scripts -----------------------------------------------------------------

async fn list_scripts(State(r): State<Region>, _u: User) -> ApiResult<impl IntoResponse> {
    Ok(Json(r.scripts().await?))
}

async fn add_script(
    State(r): State<Region>,
    User(a): User,
    ApiJson(req): ApiJson<NewScript>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(r.add_script(&a, req).await?)))
}

async fn show_script(
    State(r): State<Region>,
    _u: User,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(r.script(&name).await?))
}

async fn delete_script(
    State(r): State<Region>,
    User(a): User,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    r.delete_script(&a, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn machine_script_results(
    State(r): State<Region>,
    _u: User,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(r.machine_script_results(&id).await?))
}

/// One run with its output.
async fn machine_script_result(
    State(r): State<Region>,
    _u: User,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(r.machine_script_result(&id, &name).await?))
}

async fn task_scripts(
    State(r): State<Region>,
    MachineToken(t): MachineToken,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(r.task_scripts(&t).await?))
}

async fn report_script_result(
    State(r): State<Region>,
    MachineToken(t): MachineToken,
    ApiJson(report): ApiJson<ScriptResultReport>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(r.report_script_result(&t, report).await?))
}

#[derive(Deserialize)]
struct CloudInitQuery {
    metadata_url: String,
}

/// A deploying machine's NoCloud seed, rendered for the URL it reaches
/// kumo by.
async fn cloud_init(
    State(r): State<Region>,
    MachineToken(t): MachineToken,
    ApiQuery(q): ApiQuery<CloudInitQuery>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(r.cloud_init(&t, &q.metadata_url).await?))
}

async fn installed(
    State(r): State<Region>,
    MachineToken(t): MachineToken,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(r.machine_installed(&t).await?))
}

/// An unknown machine enlists itself. Anonymous, as in MAAS: the machine
/// has no token yet, and all it can do is add a New machine that an admin
/// must still commission (and that never reuses a known MAC).
async fn enlist(
    State(r): State<Region>,
    ApiJson(req): ApiJson<EnlistRequest>,
) -> ApiResult<impl IntoResponse> {
    let m = r.enlist(req).await?;
    Ok((StatusCode::CREATED, Json(r.view(m))))
}

/// Serves the API on `listener` until `shutdown` resolves, then finishes
/// the requests in flight.
pub async fn serve(
    region: Region,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(region, None, listener, shutdown).await
}

pub async fn serve_with(
    region: Region,
    controller: Option<kumo_controller::Controller>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // One router shared by every connection: `axum::serve` given a Router
    // clones it per connection (~70 KiB each with kumo's routes), which
    // dominated the controller's memory per agent connection.
    axum::serve(
        listener,
        router_with(region, controller).into_make_service(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

// ---- network model ----------------------------------------------------------

use kumo_model::network::{DnsRecord, Domain, Fabric, LinkRequest, Subnet, SubnetRange, Vlan};

async fn list_fabrics(State(r): State<Region>, _u: User) -> ApiResult<impl IntoResponse> {
    Ok(Json(r.fabrics().await?))
}

async fn create_fabric(
    State(r): State<Region>,
    User(a): User,
    ApiJson(f): ApiJson<Fabric>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(r.create_fabric(&a, f).await?)))
}

async fn delete_fabric(
    State(r): State<Region>,
    User(a): User,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    r.delete_fabric(&a, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_vlans(State(r): State<Region>, _u: User) -> ApiResult<impl IntoResponse> {
    Ok(Json(r.vlans().await?))
}

async fn create_vlan(
    State(r): State<Region>,
    User(a): User,
    ApiJson(v): ApiJson<Vlan>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(r.create_vlan(&a, v).await?)))
}

async fn update_vlan(
    State(r): State<Region>,
    User(a): User,
    Path((fabric, vid)): Path<(String, u16)>,
    ApiJson(mut v): ApiJson<Vlan>,
) -> ApiResult<impl IntoResponse> {
    v.fabric = fabric;
    v.vid = vid;
    Ok(Json(r.update_vlan(&a, v).await?))
}

async fn delete_vlan(
    State(r): State<Region>,
    User(a): User,
    Path((fabric, vid)): Path<(String, u16)>,
) -> ApiResult<impl IntoResponse> {
    r.delete_vlan(&a, &fabric, vid).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_subnets(State(r): State<Region>, _u: User) -> ApiResult<impl IntoResponse> {
    Ok(Json(r.subnets().await?))
}

async fn create_subnet(
    State(r): State<Region>,
    User(a): User,
    ApiJson(s): ApiJson<Subnet>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(r.create_subnet(&a, s).await?)))
}

async fn show_subnet(
    State(r): State<Region>,
    _u: User,
    Path((net, prefix)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(r.subnet(&format!("{net}/{prefix}")).await?))
}

async fn delete_subnet(
    State(r): State<Region>,
    User(a): User,
    Path((net, prefix)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    r.delete_subnet(&a, &format!("{net}/{prefix}")).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct SubnetFilter {
    subnet: Option<String>,
}

async fn list_ranges(
    State(r): State<Region>,
    _u: User,
    ApiQuery(f): ApiQuery<SubnetFilter>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(r.ranges(f.subnet.as_deref()).await?))
}

async fn create_range(
    State(r): State<Region>,
    User(a): User,
    ApiJson(x): ApiJson<SubnetRange>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(r.create_range(&a, x).await?)))
}

async fn delete_range(
    State(r): State<Region>,
    User(a): User,
    Path((net, prefix, start)): Path<(String, String, String)>,
) -> ApiResult<impl IntoResponse> {
    r.delete_range(&a, &format!("{net}/{prefix}"), &start)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_domains(State(r): State<Region>, _u: User) -> ApiResult<impl IntoResponse> {
    Ok(Json(r.domains().await?))
}

async fn create_domain(
    State(r): State<Region>,
    User(a): User,
    ApiJson(d): ApiJson<Domain>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(r.create_domain(&a, d).await?)))
}

async fn delete_domain(
    State(r): State<Region>,
    User(a): User,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    r.delete_domain(&a, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_records(State(r): State<Region>, _u: User) -> ApiResult<impl IntoResponse> {
    Ok(Json(r.dns_records().await?))
}

async fn create_record(
    State(r): State<Region>,
    User(a): User,
    ApiJson(x): ApiJson<DnsRecord>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(r.create_dns_record(&a, x).await?)))
}

async fn delete_record(
    State(r): State<Region>,
    User(a): User,
    ApiJson(x): ApiJson<DnsRecord>,
) -> ApiResult<impl IntoResponse> {
    r.delete_dns_record(&a, x).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn machine_addresses(
    State(r): State<Region>,
    _u: User,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(r.machine_addresses(&id).await?))
}

async fn link_machine(
    State(r): State<Region>,
    User(a): User,
    Path(id): Path<String>,
    ApiJson(l): ApiJson<LinkRequest>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(r.link_machine(&a, &id, l).await?)))
}

async fn unlink_machine(
    State(r): State<Region>,
    User(a): User,
    Path((id, ip)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    r.unlink_machine(&a, &id, &ip).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// What a rack serves: DHCP subnets with their known hosts, and DNS data.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RackConfigQuery {
    /// Seconds to hold the request while the configuration still matches
    /// the `If-None-Match` tag (a long poll); at most 300.
    #[serde(default)]
    wait: u64,
}

/// The rack's configuration with its tag in `ETag`. Given `If-None-Match`
/// and `wait`, answers as soon as the configuration differs from that tag,
/// or `304 Not Modified` once `wait` seconds pass without a change.
async fn rack_config(
    State(r): State<Region>,
    User(a): User,
    ApiQuery(q): ApiQuery<RackConfigQuery>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    if !a.admin {
        return Err(RegionError::Forbidden(format!(
            "the rack configuration needs an admin key; {} is not an admin",
            a.username
        ))
        .into());
    }
    if q.wait > 300 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("wait: {} seconds is over the limit of 300", q.wait),
        ));
    }
    let known = headers
        .get(axum::http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.trim()
                .trim_start_matches("W/")
                .trim_matches('"')
                .to_owned()
        });
    let (tag, cfg) = r
        .rack_config_wait(known.as_deref(), std::time::Duration::from_secs(q.wait))
        .await?;
    let etag = [(axum::http::header::ETAG, format!("\"{tag}\""))];
    if known.as_deref() == Some(tag.as_str()) {
        return Ok((StatusCode::NOT_MODIFIED, etag).into_response());
    }
    Ok((etag, Json(cfg)).into_response())
}

async fn rogue_dhcp(State(r): State<Region>, _u: User) -> ApiResult<impl IntoResponse> {
    Ok(Json(r.rogue_dhcp().await?))
}

async fn report_rogue_dhcp(
    State(r): State<Region>,
    User(a): User,
    ApiJson(report): ApiJson<kumo_model::network::RogueDhcpReport>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(r.report_rogue_dhcp(&a, report).await?))
}
