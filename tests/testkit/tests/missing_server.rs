//! A test pointed at a Postgres that does not exist fails, saying which server and why; it is
//! never skipped. (Its own binary: the server choice is made once per binary.)

#[test]
fn a_missing_postgres_is_an_error_not_a_skip() {
    // SAFETY: this binary's only test sets the variable before any thread reads it.
    unsafe {
        std::env::set_var(
            "ZQ_TEST_DATABASE_URL",
            "postgres://nobody@127.0.0.1:1/nothing_here",
        );
    }
    let error = testkit::try_postgres().expect_err("there is no Postgres on port 1");
    let message = error.to_string();
    assert!(message.contains("Postgres"), "{message}");
    assert!(message.contains("127.0.0.1:1"), "{message}");

    // The panicking form, which tests use, fails the test with the same message.
    let panic = std::panic::catch_unwind(testkit::postgres).expect_err("must panic");
    let text = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(text.contains("127.0.0.1:1"), "{text}");
}
