//! Pages for people: the landing page at `/`, the GraphQL explorer (GraphiQL) on `GET /graphql`
//! from a browser, the API guide and the schema. Every file a page loads is embedded in the
//! binary and served from `/assets/`, so the console works on a machine with no internet.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// What browsers may do with our pages: load only what this server serves, never be framed.
const PAGE_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; font-src 'self' data:; connect-src 'self' ws: wss:; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

const fn embedded(name: &'static str, content_type: &'static str, bytes: &'static [u8]) -> Asset {
    Asset {
        name,
        content_type,
        bytes,
    }
}

const ASSETS: &[Asset] = &[
    embedded(
        "graphiql.min.js",
        JS,
        include_bytes!("../assets/graphiql.min.js"),
    ),
    embedded(
        "graphiql.min.css",
        CSS,
        include_bytes!("../assets/graphiql.min.css"),
    ),
    embedded(
        "react.production.min.js",
        JS,
        include_bytes!("../assets/react.production.min.js"),
    ),
    embedded(
        "react-dom.production.min.js",
        JS,
        include_bytes!("../assets/react-dom.production.min.js"),
    ),
    embedded(
        "graphql-ws.min.js",
        JS,
        include_bytes!("../assets/graphql-ws.min.js"),
    ),
    embedded("explorer.js", JS, include_bytes!("pages/explorer.js")),
    embedded("site.css", CSS, include_bytes!("pages/site.css")),
    embedded(
        "THIRD_PARTY_LICENSES.txt",
        TEXT,
        include_bytes!("../assets/THIRD_PARTY_LICENSES.txt"),
    ),
];

/// The client's guide, as committed in docs/api.md.
const API_GUIDE: &str = include_str!("../../docs/api.md");

fn html(body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, PAGE_POLICY),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /`: what this server is and where everything is.
pub async fn landing() -> Response {
    html(include_str!("pages/index.html"))
}

/// The GraphQL explorer page (served on `GET /graphql` to browsers).
pub fn explorer() -> Response {
    html(include_str!("pages/explorer.html"))
}

/// `GET /assets/{name}`: an embedded file.
pub async fn asset(Path(name): Path<String>) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    let mut response = asset.bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    // Not content-addressed: cache for a day, then revalidate.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=86400"),
    );
    response
}

/// `GET /docs/api.md`: the API guide (Markdown).
pub async fn api_guide() -> Response {
    (
        [(header::CONTENT_TYPE, "text/markdown; charset=utf-8")],
        API_GUIDE,
    )
        .into_response()
}

/// `GET /schema.graphql`: the schema this server serves, as SDL.
pub async fn schema() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        crate::schema::sdl(),
    )
        .into_response()
}
