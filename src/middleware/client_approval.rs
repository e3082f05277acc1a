//! Admits or refuses clients by the prefix of their peer id: Azureus-style `-qB4650-`, or the
//! 6-byte client id Chihaya matches (`-qB465`), or any other prefix.

use serde::Deserialize;

use super::{PreHook, RequestContext};
use crate::bittorrent::{AnnounceRequest, ClientError};

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientApprovalConfig {
    /// Only peer ids starting with one of these are served.
    pub allow: Vec<String>,
    /// Peer ids starting with one of these are refused.
    pub deny: Vec<String>,
}

impl ClientApprovalConfig {
    pub fn validate(&self) -> Result<(), String> {
        match (self.allow.is_empty(), self.deny.is_empty()) {
            (false, false) => return Err("set `allow` or `deny`, not both".into()),
            (true, true) => return Err("set `allow` or `deny`".into()),
            _ => {}
        }
        for prefix in self.allow.iter().chain(&self.deny) {
            if prefix.is_empty() || prefix.len() > 20 {
                return Err(format!("peer id prefix `{prefix}` must be 1 to 20 bytes"));
            }
        }
        Ok(())
    }
}

pub struct ClientApproval {
    prefixes: Vec<Vec<u8>>,
    allow: bool,
}

impl ClientApproval {
    pub fn new(config: &ClientApprovalConfig) -> anyhow::Result<Self> {
        config.validate().map_err(anyhow::Error::msg)?;
        let allow = !config.allow.is_empty();
        let list = if allow { &config.allow } else { &config.deny };
        Ok(ClientApproval {
            prefixes: list.iter().map(|p| p.as_bytes().to_vec()).collect(),
            allow,
        })
    }
}

const NOT_APPROVED: ClientError = ClientError::new("client not approved");

impl PreHook for ClientApproval {
    fn name(&self) -> &'static str {
        "client_approval"
    }

    fn before_announce(
        &self,
        _: &RequestContext<'_>,
        request: &mut AnnounceRequest,
    ) -> Result<(), ClientError> {
        let listed = self
            .prefixes
            .iter()
            .any(|p| request.peer_id.0.starts_with(p));
        if listed == self.allow {
            Ok(())
        } else {
            Err(NOT_APPROVED)
        }
    }
}
