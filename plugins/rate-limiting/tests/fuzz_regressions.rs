//! Findings of the fuzz targets (`fuzz/`, docs/FUZZING.md) that show in this plugin, each as
//! the smallest input that shows it.

use rate_limiting::Config;

/// `config_rate_limiting`: the same limit written two ways is the same double for Kong (cjson
/// reads with `strtod`), so Kong accepts `second` and `minute` both at 1.1111111111111111e198;
/// read by serde_json's default float parser, the short spelling came out two units in the
/// last place higher and the config was refused ("cannot be lower").
#[test]
fn equal_limits_in_two_spellings_are_equal() {
    let long = "1111111111111111111111111111111111111111111111111111111111111111111111111111111111\
                555555555555555555555555111111111111111111115555555555511111111111111111111111111\
                111111111111111111111111111115555520";
    let config = format!(r#"{{"second": 1.1111111111111111e198, "minute": {long}}}"#);
    let config = Config::parse(config.as_bytes()).expect("Kong accepts it");
    assert_eq!(config.limits[0].1, config.limits[1].1);
}
