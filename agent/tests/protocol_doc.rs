//! Every JSON example in `docs/protocol.md` parses into the protocol's own types, so the
//! document cannot drift from what the agent sends and accepts.
//!
//! Each ```json block in the document is preceded by a marker naming its type:
//! `<!-- protocol-example: StatusResult -->`. A block without a marker fails the test,
//! and so does a marker naming a type this test does not know.

use std::path::Path;

use serde::de::DeserializeOwned;
use valkey_backup_agent::protocol;

fn parse<T: DeserializeOwned>(ty: &str, text: &str) -> Result<(), String> {
    serde_json::from_str::<T>(text)
        .map(|_| ())
        .map_err(|e| format!("{ty}: {e}"))
}

fn check(ty: &str, text: &str) -> Result<(), String> {
    use protocol::*;
    match ty {
        // One request line, then event lines.
        "Request+Events" => {
            let mut lines = text.lines().filter(|l| !l.trim().is_empty());
            let request = lines.next().ok_or("empty block")?;
            parse_request(request.as_bytes()).map_err(|e| format!("request: {e}"))?;
            for line in lines {
                parse::<protocol::Event>("Event", line)?;
            }
            Ok(())
        }
        "ConfigureParams" => parse::<valkey_backup_agent::config::AgentConfig>(ty, text),
        // Members of the configure params shown on their own: valid JSON once wrapped,
        // and each one a field the configuration accepts.
        "ConfigureFragment" => {
            let members: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&format!("{{{text}}}")).map_err(|e| format!("{ty}: {e}"))?;
            let mut full = serde_json::json!({
                "cluster": "m.v", "unit": "v/0", "valkey": {"cli": "/bin/true"}
            });
            for (k, v) in members {
                full[k] = v;
            }
            parse::<valkey_backup_agent::config::AgentConfig>(ty, &full.to_string())
        }
        "ListBackupsParams" => parse::<ListBackupsParams>(ty, text),
        "PruneBackupsParams" => parse::<PruneBackupsParams>(ty, text),
        "RestoreBackupParams" => parse::<RestoreBackupParams>(ty, text),
        "VerifyBackupParams" => parse::<VerifyBackupParams>(ty, text),
        "StatusResult" => parse::<StatusResult>(ty, text),
        "ValkeyCheck" => parse::<ValkeyCheck>(ty, text),
        // Keys of the status result shown on their own.
        "StatusFragment" => {
            let members: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&format!("{{{text}}}")).map_err(|e| format!("{ty}: {e}"))?;
            for (k, v) in members {
                match k.as_str() {
                    "schedule" => {}
                    "metrics" => parse::<MetricsStatus>(ty, &v.to_string())?,
                    other => return Err(format!("{ty}: status has no key {other:?}")),
                }
            }
            Ok(())
        }
        "ManifestV1" => parse::<valkey_backup_agent::layout::ManifestV1>(ty, text),
        "ClaimRecord" => parse::<valkey_backup_agent::scheduler::ClaimRecord>(ty, text),
        "ConfigureResult" => parse::<ConfigureResult>(ty, text),
        "CreateBackupResult" => parse::<CreateBackupResult>(ty, text),
        "ListBackupsResult" => parse::<ListBackupsResult>(ty, text),
        "PruneResult" => parse::<PruneResult>(ty, text),
        "RestorePrepared" => parse::<RestorePrepared>(ty, text),
        "RestoreCommitted" => parse::<RestoreCommitted>(ty, text),
        "RestoreFinished" => parse::<RestoreFinished>(ty, text),
        "RestoreAborted" => parse::<RestoreAborted>(ty, text),
        "VerifyResult" => parse::<VerifyResult>(ty, text),
        other => Err(format!("unknown example type {other:?}")),
    }
}

#[test]
fn every_example_in_the_protocol_document_parses_into_its_type() {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md");
    let text = std::fs::read_to_string(&doc).expect("docs/protocol.md");
    let mut marker: Option<String> = None;
    let mut block: Option<String> = None;
    let mut checked = 0;
    let mut failures = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if let Some(body) = block.as_mut() {
            if line.trim_start().starts_with("```") {
                let body = block.take().expect("in a block");
                match marker.take() {
                    Some(ty) => match check(&ty, &body) {
                        Ok(()) => checked += 1,
                        Err(e) => failures.push(format!("block ending at line {}: {e}", n + 1)),
                    },
                    None => failures.push(format!(
                        "the json block ending at line {} has no protocol-example marker",
                        n + 1
                    )),
                }
            } else {
                body.push_str(line);
                body.push('\n');
            }
            continue;
        }
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("<!-- protocol-example:") {
            marker = Some(rest.trim_end_matches("-->").trim().to_owned());
        } else if trimmed.starts_with("```json") {
            block = Some(String::new());
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Every op has at least its result documented.
    assert!(checked >= 15, "only {checked} examples found");
}
