//! The serde shape of vm_config.json: every field optional, unknown fields
//! kept, so older and newer releases parse; meaning is checked later.

use std::path::Path;

use serde::Deserialize;

use super::SpecError;

#[derive(Debug, Deserialize)]
pub struct RawConfig {
    pub name: Option<String>,
    pub disks: Option<Vec<RawDisk>>,
    #[serde(rename = "sharedPath")]
    pub shared_path: Option<Vec<RawShare>>,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub params: Option<String>,
    pub bootloader: Option<String>,
    pub protected: Option<bool>,
    pub cpu_topology: Option<String>,
    pub platform_version: Option<String>,
    pub memory_mib: Option<u64>,
    pub debuggable: Option<bool>,
    pub console_out: Option<bool>,
    pub console_input_device: Option<String>,
    pub network: Option<bool>,
    pub auto_memory_balloon: Option<bool>,
    pub gpu: Option<serde_json::Value>,
    pub boot_timeout_secs: Option<i64>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub struct RawDisk {
    pub partitions: Option<Vec<RawPartition>>,
    pub image: Option<String>,
    pub writable: Option<bool>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub struct RawPartition {
    pub label: Option<String>,
    pub path: Option<String>,
    pub writable: Option<bool>,
    pub guid: Option<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub struct RawShare {
    #[serde(rename = "sharedPath")]
    pub shared_path: Option<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl RawConfig {
    pub fn parse(text: &str, file: &Path) -> Result<RawConfig, SpecError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let field = if inner.is_syntax() || inner.is_eof() || path == "." || path.is_empty() {
                "(document)".to_string()
            } else {
                path
            };
            SpecError {
                file: file.to_owned(),
                field,
                problem: if inner.is_syntax() || inner.is_eof() {
                    format!("invalid JSON: {inner}")
                } else {
                    inner.to_string()
                },
            }
        })
    }
}
