//! The `zingqueue` binary as a user runs it.

use std::process::{Command, Output};

fn zingqueue(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_zingqueue"));
    command
        .args(args)
        .env_remove("ZQ_DATABASE_URL")
        .env_remove("ZQ_DATA_DIR");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn up_opens_the_embedded_store_in_the_data_folder() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let output = zingqueue(
        &["up", "--once", "--data-dir", data_dir.to_str().unwrap()],
        &[],
    );
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(stdout.contains("embedded (SQLite)"), "{stdout}");
    assert!(stdout.contains("position 0"), "{stdout}");
    assert!(data_dir.join("zingqueue.db").is_file());

    // The environment twin of --data-dir works the same.
    let again = zingqueue(
        &["up", "--once"],
        &[("ZQ_DATA_DIR", data_dir.to_str().unwrap())],
    );
    assert!(again.status.success());
    assert!(text(&again.stdout).contains(data_dir.to_str().unwrap()));
}

#[test]
fn migrate_prepares_a_postgres_store() {
    let database = testkit::postgres();
    let output = zingqueue(&["migrate"], &[("ZQ_DATABASE_URL", &database.url)]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(stdout.contains("up to date"), "{stdout}");
    assert!(stdout.contains(&database.name), "{stdout}");
}

#[test]
fn an_unreachable_database_is_a_clear_error_not_a_panic() {
    let output = zingqueue(
        &["up", "--once"],
        &[(
            "ZQ_DATABASE_URL",
            "postgres://nobody:secret@127.0.0.1:1/none",
        )],
    );
    let stderr = text(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("opening the event store"), "{stderr}");
    assert!(!stderr.contains("secret"), "the password leaked: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let unknown = zingqueue(&["migrate"], &[("ZQ_DATABASE_URL", "mysql://db/zq")]);
    assert!(!unknown.status.success());
    assert!(text(&unknown.stderr).contains("postgres://"));
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["up", "--help"],
        &["bench", "store", "--help"],
    ] {
        let output = zingqueue(args, &[]);
        assert!(output.status.success(), "{args:?}");
        assert!(text(&output.stdout).contains("Usage"), "{args:?}");
    }
    let help = text(&zingqueue(&["--help"], &[]).stdout);
    assert!(
        help.contains("ZQ_DATABASE_URL") && help.contains("ZQ_DATA_DIR"),
        "{help}"
    );
}
