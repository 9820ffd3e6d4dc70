//! The payment simulator's durable ledger (`payment/src/ledger.rs`): the money the system really
//! took and gave back, whatever the events say.

pub struct Totals {
    /// Charges that took money.
    pub charges_taken: usize,
    /// Refunds that gave it back.
    pub refunds: usize,
}

pub fn totals(database_url: &str) -> Totals {
    let totals = tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(payment::simulator::ledger_totals(database_url))
        .expect("the ledger is readable");
    let count = |n: u64| usize::try_from(n).expect("a count");
    Totals {
        charges_taken: count(totals.charges_taken),
        refunds: count(totals.refunds_made),
    }
}
