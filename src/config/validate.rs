//! (being written) semantic validation and error locations.
use super::Config;
use std::path::Path;

#[derive(Debug, Clone)]
pub struct ConfigError;
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

pub fn parse(_text: &str, _file: &Path) -> Result<Config, ConfigErrors> {
    Err(ConfigErrors(vec![]))
}
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    parse("", path)
}
