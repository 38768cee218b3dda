//! The `[http]` keys of the appliance config (issue 11): the `Server` value and the upgrade
//! protocols relayed, with their defaults and errors.

use sluice::config::Config;
use sluice::core::http1::Upgrades;

#[test]
fn defaults_say_sluice_and_relay_websocket_only() {
    let c = Config::parse("", "t.toml").unwrap();
    assert_eq!(c.server_header.as_deref(), Some("sluice"));
    let conn = c.conn_config();
    assert_eq!(conn.server.as_deref(), Some("sluice"));
    assert_eq!(conn.upgrades, Upgrades::default());
    assert!(conn.upgrades.allows("websocket"));
    assert!(!conn.upgrades.allows("h2c"));
}

#[test]
fn server_header_is_configurable_or_off() {
    let c = Config::parse("[http]\nserver_header = \"edge proxy\"\n", "t.toml").unwrap();
    assert_eq!(c.conn_config().server.as_deref(), Some("edge proxy"));
    assert_eq!(
        c.https_config().unwrap().conn.server.as_deref(),
        Some("edge proxy")
    );
    let c = Config::parse("[http]\nserver_header = \"\"\n", "t.toml").unwrap();
    assert_eq!(c.conn_config().server, None);
    for bad in ["\"a\\r\\nX: y\"", "\" a\"", "\"caf\u{e9}\"", "\"a\\tb\""] {
        let err = Config::parse(&format!("[http]\nserver_header = {bad}\n"), "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("t.toml:2:"), "{err}");
        assert!(err.contains("http.server_header"), "{err}");
    }
}

#[test]
fn upgrade_protocols_never_include_h2c() {
    let c = Config::parse(
        "[http]\nupgrade_protocols = [\"websocket\", \"echo\"]\n",
        "t.toml",
    )
    .unwrap();
    assert!(c.conn_config().upgrades.allows("echo"));
    let c = Config::parse("[http]\nupgrade_protocols = []\n", "t.toml").unwrap();
    assert!(!c.conn_config().upgrades.allows("websocket"));
    for bad in ["\"h2c\"", "\"H2C\"", "\"HTTP\"", "\"a b\"", "\"\""] {
        let err = Config::parse(
            &format!("[http]\nupgrade_protocols = [\"websocket\", {bad}]\n"),
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("http.upgrade_protocols"), "{bad}: {err}");
    }
    let err = Config::parse("[http]\nupgrade_protocols = [\"h2c\"]\n", "t.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("h2c smuggling"), "{err}");
}
