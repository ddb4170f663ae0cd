//! The PostgreSQL engine against a plain table of the same shape through the same client, on a
//! throwaway server this benchmark starts (fsync on, the server's defaults otherwise): put,
//! put_durable and random get with 1 and 4 client threads, interleaved in chunks (see
//! `strongroom_postgres::bench`). Read the ratios, not the rates, on a shared machine.
//!
//! `cargo bench --bench postgres` (`STRONGROOM_BENCH_RECORDS` sets the records per phase,
//! default 20,000; `STRONGROOM_BENCH_PG_URL` measures on an existing database instead).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use strongroom_postgres::PgConfig;
use strongroom_postgres::bench::{PgBenchSpec, run};
use strongroom_test_support::pg::{PgServer, ServerOptions};

fn main() {
    let records = std::env::var("STRONGROOM_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    // The test servers run with fsync off; a benchmark measures the real thing.
    let server;
    let url = match std::env::var("STRONGROOM_BENCH_PG_URL") {
        Ok(u) => u,
        Err(_) => {
            server = PgServer::start_with(&ServerOptions {
                conf: vec!["fsync = on".into(), "full_page_writes = on".into()],
                ..ServerOptions::default()
            });
            server.url()
        }
    };
    let config = PgConfig::from_url(&url).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spec = PgBenchSpec {
        records,
        value_size: 1024,
        threads: vec![1, 4],
    };
    let rows = run(&config, dir.path(), &spec).unwrap();
    println!(
        "PostgreSQL engine vs plain table, {records} x 1 KiB per phase ({})",
        strongroom::core::crypto::GCM_ENGINE
    );
    println!("| op | threads | plain/s | strongroom/s | ratio | engine only/s |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.2} | {} |",
            r.op,
            r.threads,
            r.plain,
            r.strongroom,
            r.ratio,
            r.engine_only.map_or("-".to_owned(), |e| format!("{e:.0}"))
        );
    }
}
