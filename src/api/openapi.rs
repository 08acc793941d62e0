//! The OpenAPI document, generated from the handlers' own types (utoipa), served at
//! `GET /openapi.json` with interactive docs at `GET /docs`.
//!
//! Each handler's `#[utoipa::path]` lists its success response and the errors specific to
//! it (403, 404, 409). The errors that follow from an operation's *shape* are added here,
//! once, by [`add_common_responses`], so that no handler can forget one:
//!
//! * a security requirement → 401 (with its `WWW-Authenticate` header);
//! * a request body → 400 (malformed JSON), 413 (too large), 415 (not JSON), 422;
//! * query parameters → 422;
//! * every operation → 503 (shed, or a dependency down) and 429 (a rate limit spent, with
//!   `Retry-After`);
//! * every response → the `RateLimit-Policy` and `RateLimit` fields
//!   (draft-ietf-httpapi-ratelimit-headers), since every route is rate-limited;
//! * an `Idempotency-Key` header parameter (the creates, `api::idempotency`) → 409 (the
//!   key's first request is still running, with `Retry-After`), 422 (a malformed key, or
//!   one used with another request), and `Idempotent-Replayed` on the 201;
//! * every error response → an `application/problem+json` body (`Problem`);
//! * every paginated list → a `next_page` link on its 200 response, saying that
//!   `next_cursor` is the next request's `cursor` (clients and fuzzers can follow it).

use std::collections::BTreeMap;

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::{Operation, ParameterIn, PathItem};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr};
use utoipa::{Modify, OpenApi};

use crate::http::problem::{PROBLEM_JSON, Problem, ProblemField};

/// The name of the bearer-token security scheme.
pub const BEARER: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Keel",
        description = "A reference scalable backend service: a small project-management API \
                       (users, projects, members, tasks, comments, stats) that demonstrates the \
                       stabilize-first-then-scale playbook. Errors are application/problem+json \
                       (RFC 9457); lists are keyset-paginated with opaque cursors.",
        license(name = "MIT OR Apache-2.0"),
    ),
    components(schemas(Problem, ProblemField)),
    modifiers(&BearerScheme),
    tags(
        (name = "users", description = "Accounts and the caller's own data"),
        (name = "auth", description = "Access tokens"),
        (name = "projects", description = "Projects: visible to their members only"),
        (name = "members", description = "Who belongs to a project, with which role"),
        (name = "tasks", description = "A project's tasks: visible to its members only"),
        (name = "comments", description = "Comments on tasks, oldest first"),
    )
)]
pub struct ApiDoc;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("An access token from POST /v1/auth/token."))
                    .build(),
            ),
        );
    }
}

/// Adds the responses that follow from each operation's shape (see the module docs).
/// Run on the finished document: the derive's modifiers run before the routers' paths
/// are merged in.
pub fn add_common_responses(openapi: &mut utoipa::openapi::OpenApi) {
    for item in openapi.paths.paths.values_mut() {
        for operation in operations(item) {
            add_shape_errors(operation);
            add_idempotency_responses(operation);
            attach_problem_bodies(operation);
            add_rate_limit_fields(operation);
            link_next_page(operation);
        }
    }
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

fn add_shape_errors(operation: &mut Operation) {
    let responses = &mut operation.responses.responses;
    let mut add = |status: &str, description: &str| {
        responses.entry(status.to_owned()).or_insert_with(|| {
            ResponseBuilder::new()
                .description(description)
                .build()
                .into()
        });
    };
    add(
        "503",
        "Overloaded, or a dependency is down; retry after `Retry-After` seconds",
    );
    add(
        "429",
        "A rate limit is spent (see `RateLimit`); retry after `Retry-After` seconds",
    );
    if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
        add("401", "Missing, malformed, expired or forged access token");
    }
    if operation.request_body.is_some() {
        add("400", "The body is not well-formed JSON");
        add("413", "The body is larger than 64 KiB");
        add("415", "The body is not application/json");
        add("422", "The body's fields are not acceptable (see `errors`)");
    }
    let has_query = operation.parameters.iter().flatten().any(|p| match p {
        RefOr::T(p) => matches!(p.parameter_in, ParameterIn::Query),
        RefOr::Ref(_) => false,
    });
    if has_query {
        add("422", "A query parameter is not acceptable (see `errors`)");
    }
}

/// What a create that takes an `Idempotency-Key` may answer besides its own responses
/// (see `api::idempotency`); a description that is already there is extended.
fn add_idempotency_responses(operation: &mut Operation) {
    let keyed = operation.parameters.iter().flatten().any(|p| match p {
        RefOr::T(p) => matches!(p.parameter_in, ParameterIn::Header) && p.name == "Idempotency-Key",
        RefOr::Ref(_) => false,
    });
    if !keyed {
        return;
    }
    let responses = &mut operation.responses.responses;
    add_or_extend(
        responses,
        "422",
        "the `Idempotency-Key` is malformed, or was used with a different request",
    );
    add_or_extend(
        responses,
        "409",
        "a request with the same `Idempotency-Key` is still being processed; retry it unchanged after `Retry-After` seconds",
    );
    let headers = [
        (
            "409",
            "Retry-After",
            Type::Integer,
            "Seconds to wait before retrying",
        ),
        (
            "201",
            "Idempotent-Replayed",
            Type::String,
            "`true` on a repeat with the same `Idempotency-Key`: the first response, replayed; nothing was created",
        ),
    ];
    for (status, name, kind, description) in headers {
        if let Some(RefOr::T(response)) = responses.get_mut(status) {
            let header = HeaderBuilder::new()
                .schema(Some(ObjectBuilder::new().schema_type(kind)))
                .description(Some(description))
                .build();
            response.headers.insert(name.to_owned(), header.into());
        }
    }
}

/// Adds the response of `status` with `description`, or appends `description` to it.
fn add_or_extend(
    responses: &mut BTreeMap<String, RefOr<Response>>,
    status: &str,
    description: &str,
) {
    let response = match responses.remove(status) {
        Some(RefOr::T(mut response)) => {
            response.description = format!("{}; or: {description}", response.description);
            response
        }
        _ => ResponseBuilder::new().description(description).build(),
    };
    responses.insert(status.to_owned(), response.into());
}

fn link_next_page(operation: &mut Operation) {
    let parameters: Vec<(String, bool)> = operation
        .parameters
        .iter()
        .flatten()
        .filter_map(|p| match p {
            RefOr::T(p) => Some((p.name.clone(), matches!(p.parameter_in, ParameterIn::Path))),
            RefOr::Ref(_) => None,
        })
        .collect();
    let Some(operation_id) = operation.operation_id.clone() else {
        return;
    };
    if !parameters
        .iter()
        .any(|(name, in_path)| name == "cursor" && !in_path)
    {
        return;
    }
    let Some(RefOr::T(ok)) = operation.responses.responses.get_mut("200") else {
        return;
    };
    let mut link = LinkBuilder::new()
        .operation_id(operation_id)
        .description("The next page: pass `next_cursor` as `cursor` (absent on the last page).")
        .parameter("cursor", "$response.body#/next_cursor");
    // The same list: the same path parameters.
    for (name, _) in parameters.iter().filter(|(_, in_path)| *in_path) {
        link = link.parameter(name.clone(), format!("$request.path.{name}"));
    }
    ok.links.insert("next_page".to_owned(), link.build().into());
}

/// Every response of a rate-limited route carries both fields (absent only while the
/// `rate_limit` fix is switched off).
fn add_rate_limit_fields(operation: &mut Operation) {
    let fields = [
        (
            "RateLimit-Policy",
            "The rate-limit policies this request counted against, as a Structured Fields \
             list: `\"token-ip\";q=10;w=60` (q requests at once, w seconds to refill them all)",
        ),
        (
            "RateLimit",
            "The policy closest to running out: `\"token-ip\";r=3;t=42` (r requests left, \
             t seconds until the budget is full)",
        ),
    ];
    for response in operation.responses.responses.values_mut() {
        let RefOr::T(response) = response else {
            continue;
        };
        for (name, description) in fields {
            response.headers.entry(name.to_owned()).or_insert_with(|| {
                HeaderBuilder::new()
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                    .description(Some(description))
                    .build()
                    .into()
            });
        }
    }
}

fn attach_problem_bodies(operation: &mut Operation) {
    for (status, response) in operation.responses.responses.iter_mut() {
        let RefOr::T(response) = response else {
            continue;
        };
        if !status.starts_with(['4', '5']) || !response.content.is_empty() {
            continue;
        }
        response.content.insert(
            PROBLEM_JSON.to_owned(),
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build()
                .into(),
        );
        if status == "401" {
            response.headers.insert(
                "WWW-Authenticate".to_owned(),
                HeaderBuilder::new()
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                    .description(Some(
                        "`Bearer`, with `error=\"invalid_token\"` when a token was sent",
                    ))
                    .build()
                    .into(),
            );
        }
        if status == "503" || status == "429" {
            response.headers.insert(
                "Retry-After".to_owned(),
                HeaderBuilder::new()
                    .schema(Some(ObjectBuilder::new().schema_type(Type::Integer)))
                    .description(Some("Seconds to wait before retrying"))
                    .build()
                    .into(),
            );
        }
    }
}
