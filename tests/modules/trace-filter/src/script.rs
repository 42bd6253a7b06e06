//! The script a trace filter follows (its plugin configuration); see the crate docs.

use serde::Deserialize;

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    #[default]
    Continue,
    Pause,
    Buffer,
    Reply,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Resume {
    #[default]
    None,
    HttpCall,
    Tick,
    /// The root context's next `on_tick` answers the stream (`reply_status`) instead of
    /// resuming it.
    TickReply,
    BodyEos,
    /// A unary gRPC call (`svc.Echo/Say` with the message `hi`) to `callout`, made when
    /// pausing; its close resumes.
    GrpcCall,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Script {
    pub name: String,
    #[serde(default)]
    pub request_headers: Step,
    #[serde(default)]
    pub request_body: Step,
    #[serde(default)]
    pub request_trailers: Step,
    #[serde(default)]
    pub response_headers: Step,
    #[serde(default)]
    pub response_body: Step,
    #[serde(default)]
    pub response_trailers: Step,
    #[serde(default)]
    pub resume: Resume,
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u32,
    #[serde(default = "default_callout")]
    pub callout: String,
    #[serde(default = "default_reply_status")]
    pub reply_status: u32,
    /// The gRPC status a reply gives (`proxy_send_local_response`'s `grpc_status`); -1, the
    /// default, gives none.
    #[serde(default = "default_reply_grpc_status")]
    pub reply_grpc_status: i32,
    #[serde(default)]
    pub set_request_body: Option<String>,
    #[serde(default)]
    pub set_response_body: Option<String>,
    #[serde(default)]
    pub add_request_trailer: bool,
    #[serde(default)]
    pub add_response_trailer: bool,
}

fn default_tick_ms() -> u32 {
    50
}

fn default_callout() -> String {
    "service.callee".to_owned()
}

fn default_reply_status() -> u32 {
    403
}

fn default_reply_grpc_status() -> i32 {
    -1
}

impl Script {
    pub fn parse(bytes: &[u8]) -> Result<Script, String> {
        let script: Script = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if script.name.is_empty() || script.name.contains(['|', ' ']) {
            return Err("name: a non-empty word".to_owned());
        }
        if !(200..600).contains(&script.reply_status) {
            return Err("reply_status: 200 to 599".to_owned());
        }
        if !(-1..=16).contains(&script.reply_grpc_status) {
            return Err("reply_grpc_status: -1 to 16".to_owned());
        }
        Ok(script)
    }

    pub fn header_name(&self) -> String {
        format!("x-t-{}", self.name.to_ascii_lowercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_refusals() {
        let s = Script::parse(br#"{"name":"A"}"#).unwrap();
        assert_eq!(
            (s.request_headers, s.resume, s.tick_ms, s.reply_status),
            (Step::Continue, Resume::None, 50, 403)
        );
        assert_eq!(s.header_name(), "x-t-a");
        let s = Script::parse(
            br#"{"name":"B","request_body":"buffer","resume":"body_eos","add_request_trailer":true}"#,
        )
        .unwrap();
        assert_eq!((s.request_body, s.resume), (Step::Buffer, Resume::BodyEos));
        assert!(Script::parse(br#"{"name":"A","request_body":"later"}"#).is_err());
        assert!(Script::parse(br#"{"name":"A","unknown":1}"#).is_err());
        assert!(Script::parse(br#"{"name":"a b"}"#).is_err());
        assert!(Script::parse(br#"{"name":"A","reply_status":99}"#).is_err());
        assert_eq!(
            Script::parse(br#"{"name":"A"}"#).unwrap().reply_grpc_status,
            -1
        );
        assert!(Script::parse(br#"{"name":"A","reply_grpc_status":17}"#).is_err());
    }
}
