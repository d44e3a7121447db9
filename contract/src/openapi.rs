//! What the router's and the admin API's OpenAPI 3.1 documents share: the
//! error body and its responses (from the one status table in `error`), the
//! bearer security scheme, and small builders for operations, so that each
//! document reads as a list of routes.
//!
//! The documents themselves are `router::openapi` and `registry::openapi`;
//! each is served at `GET /openapi.json` on its listener.

use serde_json::Value;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{
    HttpMethod, Operation, OperationBuilder, Parameter, ParameterBuilder, ParameterIn,
};
use utoipa::openapi::request_body::{RequestBody, RequestBodyBuilder};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    Components, ComponentsBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathItem, Paths, Ref,
    RefOr, Required,
};
use utoipa::{PartialSchema, ToSchema};

use crate::error::{ErrorBody, ErrorCode};

/// The path both listeners serve their document at.
pub const OPENAPI_PATH: &str = "/openapi.json";

/// The name of the bearer security scheme (`authorization: Bearer <api key>`).
pub const BEARER: &str = "bearer";

/// The JSON media type.
pub const JSON: &str = "application/json";

/// The content type of `/metrics` answers.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A reference to a component schema registered with [`components`].
pub fn schema_ref<T: ToSchema>() -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(T::name()))
}

/// A free-form JSON object (a function's own input or output).
pub fn free_object() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::Object))
        .into()
}

/// A string schema.
pub fn string() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .into()
}

/// A version number: an integer from 1 to `u32::MAX`.
pub fn version_number() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::Integer))
        .minimum(Some(1.0))
        .maximum(Some(f64::from(u32::MAX)))
        .into()
}

/// A string schema with a regular-expression pattern.
pub fn string_matching(pattern: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .pattern(Some(pattern))
        .into()
}

/// A required path parameter.
pub fn path_param(name: &str, description: &str, schema: RefOr<Schema>) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .description(Some(description))
        .schema(Some(schema))
        .build()
}

/// An optional query parameter.
pub fn query_param(name: &str, description: &str, schema: RefOr<Schema>) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Query)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(schema))
        .build()
}

/// A required request body of one media type, with an optional example.
pub fn body(media_type: &str, schema: RefOr<Schema>, example: Option<Value>) -> RequestBody {
    RequestBodyBuilder::new()
        .required(Some(Required::True))
        .content(
            media_type,
            ContentBuilder::new()
                .schema(Some(schema))
                .example(example)
                .build(),
        )
        .build()
}

/// A JSON request body.
pub fn json_body(schema: RefOr<Schema>, example: Option<Value>) -> RequestBody {
    body(JSON, schema, example)
}

/// A response with a body of one media type.
pub fn response(description: &str, media_type: &str, schema: RefOr<Schema>) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            media_type,
            ContentBuilder::new().schema(Some(schema)).build(),
        )
        .build()
}

/// A JSON response.
pub fn json_response(description: &str, schema: RefOr<Schema>) -> Response {
    response(description, JSON, schema)
}

/// A response with no body.
pub fn empty_response(description: &str) -> Response {
    ResponseBuilder::new().description(description).build()
}

/// Adds a string header to a response.
pub fn with_header(mut response: Response, name: &str, description: &str) -> Response {
    let header = HeaderBuilder::new()
        .schema(Some(string()))
        .description(Some(description))
        .build();
    response.headers.insert(name.to_string(), header.into());
    response
}

/// The error codes the contract answers with `status`, from its one table.
pub fn codes_for(status: u16) -> Vec<&'static str> {
    ErrorCode::all()
        .iter()
        .filter(|c| c.status() == status)
        .map(|c| c.as_str())
        .collect()
}

/// The error response for `status`: the `Error` body, its codes listed, and
/// `retry-after` where the codes carry one.
pub fn error_response(status: u16) -> Response {
    error_response_with(
        status,
        schema_ref::<ErrorBody>(),
        "`{\"error\": {\"code\", \"message\", \"details\"}}`",
    )
}

/// An error response for `status` with another body (the OIP paths'
/// `{"error": "<message>"}`), described as `shape`.
pub fn error_response_with(status: u16, body: RefOr<Schema>, shape: &str) -> Response {
    let codes = codes_for(status).join("`, `");
    let description = format!("Error `{codes}`: {shape}.");
    let response = json_response(&description, body);
    if matches!(status, 429 | 503) {
        with_header(
            response,
            "retry-after",
            "Seconds to wait before trying again.",
        )
    } else {
        response
    }
}

/// One operation of a document: its method and path, and what it says.
pub struct Route {
    pub method: HttpMethod,
    pub path: &'static str,
    pub operation: Operation,
}

/// Starts an operation: a summary, a tag and an id.
pub fn operation(id: &str, tag: &str, summary: &str) -> OperationBuilder {
    OperationBuilder::new()
        .operation_id(Some(id))
        .tag(tag)
        .summary(Some(summary))
}

/// Finishes an operation: requires the bearer key (`secured`) or none, and
/// adds the error responses for `errors`. Where the operation already
/// answers a status itself (a 503 "not ready" body), its JSON body becomes
/// one of that body or the error body.
pub fn finish(
    method: HttpMethod,
    path: &'static str,
    builder: OperationBuilder,
    secured: bool,
    errors: &[u16],
) -> Route {
    finish_with(method, path, builder, secured, errors, error_response)
}

/// [`finish`] with the error responses `error` makes.
pub fn finish_with(
    method: HttpMethod,
    path: &'static str,
    builder: OperationBuilder,
    secured: bool,
    errors: &[u16],
    error: fn(u16) -> Response,
) -> Route {
    let security = if secured {
        SecurityRequirement::new(BEARER, Vec::<String>::new())
    } else {
        SecurityRequirement::default()
    };
    let mut operation = builder.security(security).build();
    for &status in errors {
        let error = error(status);
        match operation.responses.responses.get_mut(&status.to_string()) {
            Some(RefOr::T(own)) => {
                if let Some(RefOr::T(content)) = own.content.get_mut(JSON) {
                    let mut either = OneOfBuilder::new();
                    if let Some(mine) = content.schema.take() {
                        either = either.item(mine);
                    }
                    if let Some(RefOr::T(theirs)) = error.content.get(JSON) {
                        if let Some(schema) = theirs.schema.clone() {
                            either = either.item(schema);
                        }
                    }
                    content.schema = Some(either.into());
                    own.description = format!("{} Or: {}", own.description, error.description);
                }
            }
            _ => {
                operation
                    .responses
                    .responses
                    .insert(status.to_string(), error.into());
            }
        }
    }
    Route {
        method,
        path,
        operation,
    }
}

/// Components with the `Error` schema, the bearer scheme and the schemas of `extra`.
pub fn components(extra: Vec<(String, RefOr<Schema>)>) -> Components {
    let mut schemas = Vec::new();
    ErrorBody::schemas(&mut schemas);
    schemas.push((ErrorBody::name().into_owned(), ErrorBody::schema()));
    schemas.extend(extra);
    let mut components = ComponentsBuilder::new().schemas_from_iter(schemas).build();
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("An API key: `authorization: Bearer <key>`."))
                .build(),
        ),
    );
    components
}

/// The schemas `T` names, and `T`'s own, for [`components`].
pub fn schemas_of<T: ToSchema>(into: &mut Vec<(String, RefOr<Schema>)>) {
    T::schemas(into);
    into.push((T::name().into_owned(), T::schema()));
}

/// A whole document.
pub fn document(
    title: &str,
    description: &str,
    routes: Vec<Route>,
    components: Components,
) -> OpenApi {
    let mut paths = Paths::new();
    for route in routes {
        match paths.paths.get_mut(route.path) {
            Some(item) => item.merge_operations(PathItem::new(route.method, route.operation)),
            None => {
                paths.paths.insert(
                    route.path.into(),
                    PathItem::new(route.method, route.operation),
                );
            }
        }
    }
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title(title)
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(description))
                .build(),
        )
        .paths(paths)
        .components(Some(components))
        .build()
}

/// The `(METHOD, path)` pairs a document describes, sorted.
pub fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, item) in paths {
            for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
                if item.get(method).is_some() {
                    out.push((method.to_uppercase(), path.clone()));
                }
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_responses_list_the_codes_of_their_status() {
        assert_eq!(codes_for(429), ["rate_limited", "quota_exceeded"]);
        let response = serde_json::to_value(error_response(503)).unwrap();
        let text = response["description"].as_str().unwrap();
        for code in ["unavailable", "circuit_open", "overloaded"] {
            assert!(text.contains(code), "{text}");
        }
        assert!(response["headers"]["retry-after"].is_object());
        assert_eq!(
            response["content"][JSON]["schema"]["$ref"],
            "#/components/schemas/Error"
        );
    }

    #[test]
    fn the_error_schema_is_the_error_body() {
        let components = serde_json::to_value(components(Vec::new())).unwrap();
        let schemas = &components["schemas"];
        let detail = &schemas["ErrorDetail"];
        assert_eq!(schemas["Error"]["required"], serde_json::json!(["error"]));
        let mut required: Vec<&str> = detail["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        required.sort();
        assert_eq!(required, ["code", "message"]);
        let codes: Vec<&str> = schemas["ErrorCode"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        let wire: Vec<&str> = ErrorCode::all().iter().map(|c| c.as_str()).collect();
        assert_eq!(codes, wire);
        assert_eq!(components["securitySchemes"][BEARER]["scheme"], "bearer");
    }
}
