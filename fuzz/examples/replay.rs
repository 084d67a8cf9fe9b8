//! Replays fuzz inputs outside libFuzzer: `cargo run --example replay -- TARGET FILE...`
//! (with `TEESHM_FUZZ_TRACE=1` to print every SMC of the core targets).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((target, files)) = args.split_first() else {
        eprintln!("usage: replay TARGET FILE...");
        std::process::exit(2);
    };
    for file in files {
        let data = std::fs::read(file).expect("readable input");
        match target.as_str() {
            "page_list" => teeshm_fuzz::page_list(&data),
            "msg_arg" => teeshm_fuzz::msg_arg(&data),
            "smc_surface" => teeshm_fuzz::smc_surface(&data),
            "mediator" => teeshm_fuzz::mediator::mediator(&data),
            other => panic!("unknown target {other}"),
        }
        eprintln!("{file}: ok");
    }
}
