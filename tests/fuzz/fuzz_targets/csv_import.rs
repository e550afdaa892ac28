//! Catalog CSV import: any file is all rows or errors per row.
#![no_main]
use libfuzzer_sys::fuzz_target;
use storegate_hub::catalog;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = catalog::parse_products_csv(text);
    let _ = catalog::parse_prices_csv(text);
});
