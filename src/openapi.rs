//! The REST API's OpenAPI 3 document, generated from the handlers' annotations and the
//! request/response types (utoipa); served at `GET /v1/openapi.json`.

use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::http::{rest, sessions};

#[derive(OpenApi)]
#[openapi(
    info(title = "veza-sfu REST API", description = "Session management and recordings for the Veza API (service tokens: grant admin)."),
    paths(
        sessions::create,
        sessions::list,
        sessions::show,
        sessions::end,
        sessions::kick,
        sessions::mute,
        sessions::grants,
        rest::start,
        rest::list,
        rest::info,
        rest::stop,
        rest::export,
        rest::export_status,
        rest::download,
    ),
    components(schemas(
        sessions::CreateSession,
        sessions::MuteBody,
        sessions::GrantsBody,
        sessions::SessionList,
        crate::session::SessionView,
        crate::session::ParticipantView,
        veza_signaling::HttpError,
        veza_signaling::ErrorCode,
        veza_signaling::Grants,
        veza_signaling::TrackInfo,
        veza_signaling::ParticipantInfo,
    )),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "sessions", description = "create, list, inspect and end sessions; kick, mute, change grants"),
        (name = "recordings", description = "record a session, export and download it (admin, or a participant token with grant record)"),
    ),
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The document, built once per call (cheap; it is small).
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
