//! The system under test: servers from testkit and every ZingQueue component as a process of
//! its own (`zingqueue run …`: two API replicas, two payment members), and the faults it
//! suffers.

use std::time::Duration;

use crate::support::{Running, interrupt, spawn_until};

pub const ADMIN: &str = "chaos-suite-admin-token-0123456789abcdefgh";

/// The faults, in the order they are injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    PostgresFast,
    PostgresImmediate,
    RedisFromOlderSnapshot,
    RedisFlushAll,
    BrokerKill,
    SmtpDown,
    Kill(&'static str),
    PaymentMemberJoinsAndLeaves,
}

impl Fault {
    pub const ALL: [Fault; 13] = [
        Fault::PostgresFast,
        Fault::PostgresImmediate,
        Fault::RedisFromOlderSnapshot,
        Fault::RedisFlushAll,
        Fault::BrokerKill,
        Fault::SmtpDown,
        Fault::Kill("api-1"),
        Fault::Kill("relay"),
        Fault::Kill("seat-lock"),
        Fault::Kill("payment-1"),
        Fault::Kill("notifier"),
        Fault::Kill("projections"),
        Fault::PaymentMemberJoinsAndLeaves,
    ];

    pub fn describe(self) -> String {
        match self {
            Fault::PostgresFast => "Postgres restart (`pg_ctl stop -m fast`, 2 s down)".into(),
            Fault::PostgresImmediate => {
                "Postgres restart (`pg_ctl stop -m immediate`, 2 s down)".into()
            }
            Fault::RedisFromOlderSnapshot => {
                "Redis kill -9, restarted from a 2 s older RDB snapshot".into()
            }
            Fault::RedisFlushAll => "Redis FLUSHALL".into(),
            Fault::BrokerKill => "broker (nisshi) kill -9, 2 s down".into(),
            Fault::SmtpDown => "SMTP server stopped, 2 s down".into(),
            Fault::Kill(component) => format!("`{component}` kill -9 and restart"),
            Fault::PaymentMemberJoinsAndLeaves => "a payment member joins, then leaves".into(),
        }
    }
}

/// One component process.
struct Component {
    name: &'static str,
    /// `zingqueue run <kind>`.
    kind: &'static str,
    /// An API's fixed address (kept across restarts, as behind a load balancer).
    listen: Option<String>,
    running: Option<Running>,
    /// Where a non-API component serves `/metrics` (printed at start).
    metrics: Option<String>,
}

pub struct Cluster {
    pub postgres: testkit::OwnPostgres,
    pub redis: testkit::OwnRedis,
    pub broker: testkit::OwnNisshi,
    _broker_storage: testkit::PostgresDatabase,
    pub smtp: testkit::SmtpServer,
    _data_dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    components: Vec<Component>,
    /// The API replicas' addresses.
    pub apis: Vec<String>,
    /// How many times the notifier was killed (each may leave one duplicate email).
    pub notifier_kills: usize,
}

/// A free loopback address (bound, then released for the component to bind).
fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

impl Cluster {
    pub fn start() -> Cluster {
        let postgres = testkit::own_postgres();
        let redis = testkit::own_redis(testkit::RedisPersistence::Rdb);
        let broker_storage = testkit::postgres();
        let broker =
            testkit::own_nisshi(testkit::NisshiStorage::Postgres(broker_storage.url.clone()));
        let smtp = testkit::smtp();
        let data_dir = tempfile::tempdir().unwrap();
        let env: Vec<(String, String)> = [
            ("ZQ_DATABASE_URL", postgres.url.clone()),
            ("ZQ_KAFKA_BROKERS", broker.bootstrap_servers.clone()),
            ("ZQ_REDIS_URL", redis.url.clone()),
            ("ZQ_SMTP_URL", smtp.url.clone()),
            ("ZQ_ADMIN_TOKEN", ADMIN.to_string()),
            ("ZQ_DATA_DIR", data_dir.path().display().to_string()),
            ("ZQ_PARTITIONS", "4".to_string()),
            ("ZQ_SESSION_TIMEOUT_MS", "3000".to_string()),
            ("ZQ_PAYMENT_RETRY_BASE_MS", "20".to_string()),
            ("RUST_LOG", "error".to_string()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_string(), value))
        .collect();
        let component = |name, kind, listen| Component {
            name,
            kind,
            listen,
            running: None,
            metrics: None,
        };
        let apis = vec![free_address(), free_address()];
        let mut cluster = Cluster {
            postgres,
            redis,
            broker,
            _broker_storage: broker_storage,
            smtp,
            _data_dir: data_dir,
            env,
            components: vec![
                component("api-1", "api", Some(apis[0].clone())),
                component("api-2", "api", Some(apis[1].clone())),
                component("relay", "relay", None),
                component("seat-lock", "seat-lock", None),
                component("payment-1", "payment", None),
                component("payment-2", "payment", None),
                component("notifier", "notifier", None),
                component("projections", "projections", None),
            ],
            apis,
            notifier_kills: 0,
        };
        for index in 0..cluster.components.len() {
            cluster.launch(index);
        }
        cluster
    }

    fn env<'a>(&'a self, listen: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
        let mut env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect();
        if let Some(listen) = listen {
            env.push(("ZQ_LISTEN", listen));
        }
        env
    }

    fn launch(&mut self, index: usize) {
        let (kind, listen) = {
            let component = &self.components[index];
            (component.kind, component.listen.clone())
        };
        let env = self.env(listen.as_deref());
        // The API announces its address; the others their /metrics address (printed after
        // the line that announces the component).
        let announced = if kind == "api" { "api:" } else { "metrics:" };
        let (running, rest) = spawn_until(&["run", kind], &env, announced);
        self.components[index].running = Some(running);
        if kind != "api" {
            let address = rest
                .trim_start_matches("http://")
                .trim_end_matches("/metrics");
            self.components[index].metrics = Some(address.to_string());
        }
    }

    /// Every component answers `GET /readyz` with 200 (its servers answer, nothing is
    /// retrying); panics with the last answers after `within`.
    pub fn wait_all_ready(&self, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        loop {
            let waiting: Vec<String> = self
                .components
                .iter()
                .filter_map(|component| {
                    let address = component.listen.as_ref().or(component.metrics.as_ref())?;
                    let (status, body) = crate::support::http(address, "GET", "/readyz", None, "");
                    (status != 200).then(|| format!("{}: {status} {body}", component.name))
                })
                .collect();
            if waiting.is_empty() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not ready within {within:?}: {waiting:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A component answers `GET /readyz` with 503; panics after `within`.
    fn wait_not_ready(&self, name: &str, within: Duration) {
        let component = &self.components[self.index_of(name)];
        let address = component
            .listen
            .as_ref()
            .or(component.metrics.as_ref())
            .expect("an address");
        let deadline = std::time::Instant::now() + within;
        loop {
            let (status, _) = crate::support::http(address, "GET", "/readyz", None, "");
            if status == 503 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name} still ready within {within:?} of its server going away"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The `/metrics` page of a component run on its own.
    pub fn metrics_of(&self, name: &str) -> String {
        let address = self.components[self.index_of(name)]
            .metrics
            .clone()
            .unwrap_or_else(|| panic!("{name} serves no /metrics of its own"));
        crate::support::http(&address, "GET", "/metrics", None, "").1
    }

    fn index_of(&self, name: &str) -> usize {
        self.components
            .iter()
            .position(|component| component.name == name)
            .unwrap_or_else(|| panic!("no component {name}"))
    }

    /// SIGKILL a component and start it again.
    fn kill_and_restart(&mut self, name: &str) {
        let index = self.index_of(name);
        // `Running` kills with SIGKILL on drop and waits for the process.
        drop(self.components[index].running.take());
        if self.components[index].kind == "notifier" {
            self.notifier_kills += 1;
        }
        self.launch(index);
    }

    /// Every component process still runs (none exited on its own over a fault).
    pub fn assert_all_running(&mut self) {
        for component in &mut self.components {
            let running = component.running.as_mut().is_some_and(Running::is_running);
            assert!(running, "{} exited", component.name);
        }
    }

    pub fn inject(&mut self, fault: Fault) {
        let down = Duration::from_secs(2);
        match fault {
            Fault::PostgresFast => {
                self.postgres.stop(testkit::PgStop::Fast).unwrap();
                std::thread::sleep(down);
                self.postgres.start().unwrap();
            }
            Fault::PostgresImmediate => {
                self.postgres.stop(testkit::PgStop::Immediate).unwrap();
                std::thread::sleep(down);
                self.postgres.start().unwrap();
            }
            Fault::RedisFromOlderSnapshot => {
                // Holds taken in the next 2 s are not in the snapshot the restart brings back.
                self.redis.save().unwrap();
                std::thread::sleep(down);
                self.redis.restart_from_snapshot().unwrap();
            }
            Fault::RedisFlushAll => self.redis.flushall().unwrap(),
            Fault::BrokerKill => {
                self.broker.kill9();
                std::thread::sleep(down);
                // The relay shows the outage (its sends just wait), as the groups do.
                self.wait_not_ready("relay", Duration::from_secs(15));
                self.broker.start().unwrap();
            }
            Fault::SmtpDown => {
                self.smtp.stop();
                std::thread::sleep(down);
                self.smtp.start().unwrap();
            }
            Fault::Kill(name) => self.kill_and_restart(name),
            Fault::PaymentMemberJoinsAndLeaves => {
                let env = self.env(None);
                let (joined, _) = spawn_until(&["run", "payment"], &env, "payment:");
                // Long enough for the group to rebalance onto it and back.
                std::thread::sleep(Duration::from_secs(4));
                interrupt(joined);
            }
        }
        self.assert_all_running();
    }
}
