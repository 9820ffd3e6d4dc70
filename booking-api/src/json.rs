//! A JSON body extractor whose rejections follow API.md: not JSON → 415, malformed JSON → 400,
//! well-formed but not the expected shape → 422, over the body limit → 413; each as a problem
//! document with the reason (serde's path and message).

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::router::MAX_BODY_BYTES;

pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(match rejection {
                JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
                    "the body must be JSON (Content-Type: application/json)".into(),
                ),
                JsonRejection::JsonSyntaxError(error) => {
                    ApiError::BadRequest(format!("malformed JSON: {}", error.body_text()))
                }
                JsonRejection::JsonDataError(error) => ApiError::Unprocessable(error.body_text()),
                other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    ApiError::PayloadTooLarge {
                        limit: MAX_BODY_BYTES,
                    }
                }
                other => ApiError::BadRequest(other.body_text()),
            }),
        }
    }
}
