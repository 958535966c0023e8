//! The fuzz target's sequence generator as a property test on the stable toolchain:
//! many seeded random byte strings, each decoded into a sequence of C API calls.

mod common;

#[path = "common/api_driver.rs"]
mod api_driver;

#[test]
fn random_call_sequences_never_crash_and_never_lose_data() {
    let mut total = api_driver::Counts::default();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for case in 0..300 {
        let len = 16 + (case * 37) % 1500;
        let data: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let dir = common::disk_dir();
        let c = api_driver::run(&data, dir.path());
        total.calls += c.calls;
        total.ok += c.ok;
        total.verified += c.verified;
    }
    eprintln!("{total:?}");
    assert!(total.calls > 10_000, "{total:?}");
    assert!(
        total.ok > total.calls / 10,
        "too few calls succeeded to exercise the swapper: {total:?}"
    );
    assert!(
        total.verified > 100,
        "too few params were checked byte for byte: {total:?}"
    );
}
