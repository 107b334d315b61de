//! Extractors: how a handler's signature says what it needs.
//!
//! axum's own `Json`, `Query` and `Path` answer rejections in plain text; these wrappers
//! answer in the API's JSON error shape with the status the contract names (malformed JSON
//! 400, wrong types 422, too large 413). [`AuthUser`] turns a bearer token into the user
//! behind it, checking the session is still open and the account active on every request.

use std::net::SocketAddr;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use common::model::{Role, User};
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::error::ApiError;
use crate::middleware::RequestId;

/// A JSON body; rejections answer in the API's error shape.
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(e) => {
            let message = e.body_text();
            let message = message
                .strip_prefix("Failed to deserialize the JSON body into the target type: ")
                .unwrap_or(&message);
            let (field, message) = match message.split_once(": ") {
                Some((path, rest)) if !path.contains(' ') => (path.to_owned(), rest.to_owned()),
                _ => ("body".to_owned(), message.to_owned()),
            };
            ApiError::invalid(&field, message)
        }
        JsonRejection::JsonSyntaxError(_) => {
            ApiError::bad_request("malformed_json", "The request body is not valid JSON.")
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Send the body as JSON with Content-Type: application/json.",
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => payload_too_large(),
        other => ApiError::bad_request("bad_body", other.body_text()),
    }
}

/// The answer to a body over `MAX_BODY_BYTES`.
pub fn payload_too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "The request body is too large.",
    )
}

/// Query parameters; a malformed value answers 422.
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Query(v))
            .map_err(|e: QueryRejection| {
                let text = e.body_text();
                let text = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&text)
                    .to_owned();
                ApiError::invalid("query", text)
            })
    }
}

/// Path parameters; an id that is not a UUID answers 422.
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Path(v))
            .map_err(|e: PathRejection| match e {
                PathRejection::FailedToDeserializePathParams(inner) => {
                    ApiError::invalid("path", inner.body_text())
                }
                other => ApiError::internal(anyhow::anyhow!(other.body_text())),
            })
    }
}

/// Who is asking and from where: for the audit log and session metadata.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for RequestMeta {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(RequestMeta {
            ip_address: parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| addr.ip().to_string()),
            user_agent: parts
                .headers
                .get(axum::http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|ua| ua.chars().take(255).collect()),
            request_id: parts.extensions.get::<RequestId>().map(|id| id.0.clone()),
        })
    }
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub user: User,
    /// The session (device) the access token belongs to.
    pub session_id: uuid::Uuid,
}

impl AuthUser {
    /// Refuses callers below `role` with 403.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.user.role.at_least(role) {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "insufficient_role",
                format!("This action needs the {role} role or higher."),
            ))
        }
    }

    /// Managers and admins see every owner's documents; agents only their own.
    pub fn sees_all(&self) -> bool {
        self.user.role.at_least(Role::Manager)
    }

    pub fn id(&self) -> uuid::Uuid {
        self.user.id
    }
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token =
            bearer_token(parts).ok_or_else(|| ApiError::unauthorized("Not authenticated."))?;
        let claims = state
            .tokens
            .verify(token)
            .map_err(|_| ApiError::unauthorized("The access token is invalid or has expired."))?;
        let disabled = || ApiError::forbidden("account_disabled", "This account is disabled.");
        let Some(user) = state
            .db
            .users()
            .find_for_session(claims.sub, claims.sid)
            .await?
        else {
            // Deactivation also ends the sessions; the caller still deserves to learn
            // why, so a closed session of a disabled account answers 403, not 401.
            let user = state.db.users().find_by_id(claims.sub).await?;
            return Err(match user {
                Some(user) if !user.is_active => disabled(),
                _ => ApiError::unauthorized("The session has ended; log in again."),
            });
        };
        if !user.is_active {
            return Err(disabled());
        }
        Ok(AuthUser {
            user,
            session_id: claims.sid,
        })
    }
}

/// The token of an `Authorization: Bearer …` header, if there is one.
pub fn bearer_token(parts: &Parts) -> Option<&str> {
    let value = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}
