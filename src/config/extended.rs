//! The extended format (`.toml`). Being written; until then it is refused.

use super::{Config, ConfigError, ConfigErrors};

pub(super) fn parse(file: &str, _bytes: &[u8]) -> Result<Config, ConfigErrors> {
    Err(ConfigErrors(vec![ConfigError {
        location: file.to_string(),
        message: "the extended (.toml) format is not available in this build yet".into(),
    }]))
}
