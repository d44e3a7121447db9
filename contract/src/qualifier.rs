//! Which version of a function a call asks for, and the default tenant.

use crate::ApiError;

/// The tenant used until API keys arrive; the operator acts in it.
pub const DEFAULT_TENANT: &str = "default";

/// Which version of a function a call asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Qualifier {
    /// The alias `live` when it exists, else the latest version.
    Default,
    Version(u32),
    /// An alias: its routes pick the version by routing key.
    Alias(String),
}

impl Qualifier {
    /// Reads `?version=N` or `?alias=NAME` from a query string (not both: 400).
    pub fn from_query(query: Option<&str>) -> Result<Self, ApiError> {
        let mut qualifier = Qualifier::Default;
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "version" => {
                    let n = positive(value).ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "version must be a positive integer, got {value:?}"
                        ))
                    })?;
                    if matches!(qualifier, Qualifier::Alias(_)) {
                        return Err(ApiError::bad_request("give ?version= or ?alias=, not both"));
                    }
                    qualifier = Qualifier::Version(n);
                }
                "alias" => {
                    if !crate::names::valid_name(value) {
                        return Err(ApiError::bad_request(format!(
                            "alias must be a lowercase letter then a-z 0-9 - _, got {value:?}"
                        )));
                    }
                    if matches!(qualifier, Qualifier::Version(_)) {
                        return Err(ApiError::bad_request("give ?version= or ?alias=, not both"));
                    }
                    qualifier = Qualifier::Alias(value.to_string());
                }
                _ => {}
            }
        }
        Ok(qualifier)
    }

    /// Reads the `{v}` of an OIP path such as `/v2/models/{name}/versions/{v}`.
    pub fn from_path(segment: &str) -> Result<Self, ApiError> {
        positive(segment)
            .map(Qualifier::Version)
            .ok_or_else(|| ApiError::not_found(format!("model version {segment:?} not found")))
    }
}

fn positive(s: &str) -> Option<u32> {
    s.parse::<u32>().ok().filter(|n| *n > 0)
}
