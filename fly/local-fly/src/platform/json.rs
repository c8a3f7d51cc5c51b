//! What the Machines API answers about a machine, and the ids and
//! timestamps it uses.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::MachineRecord;

pub(super) fn view(machine: &MachineRecord) -> Value {
    let image = machine.config["image"].as_str().unwrap_or_default();
    let (repository, tag) = image
        .split_once('/')
        .map_or(image, |(_, rest)| rest)
        .rsplit_once(':')
        .unwrap_or((image, "latest"));
    json!({
        "id": machine.id,
        "name": machine.name,
        "state": machine.state.as_str(),
        "region": machine.region,
        "instance_id": machine.instance_id,
        "private_ip": machine.private_ip.to_string(),
        "config": machine.config,
        "image_ref": {
            "registry": image.split_once('/').map(|(registry, _)| registry).unwrap_or("registry.fly.io"),
            "repository": repository,
            "tag": tag,
            "digest": "",
        },
        "created_at": machine.created_at,
        "updated_at": machine.updated_at,
        "events": [],
    })
}

pub(super) fn random_hex(len: usize) -> String {
    (0..len)
        .map(|_| char::from_digit(fastrand::u32(0..16), 16).unwrap_or('0'))
        .collect()
}

pub(super) fn new_instance_id() -> String {
    format!("01{}", random_hex(24).to_ascii_uppercase())
}

pub(super) fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Days since the epoch to a civil date (Howard Hinnant's algorithm).
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        let now = now_rfc3339();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.starts_with("20") && now.ends_with('Z'), "{now}");
    }
}
