//! The `settings!` macro: what one row of the settings table in `config.rs` becomes.
//!
//! A row is a doc comment (the flag's help; the default is appended to it) and
//!
//! ```text
//! key: Type { flag: "VALUE", [parser: function,] [range: MIN..=MAX,] default: DEFAULT, reload: Live | Fixed }
//! ```
//!
//! `parser` parses the flag's value (else clap's own parser for `Type`: `FromStr`,
//! `From<String>` or `ValueEnum`); `range` bounds a number, for the flag and the file
//! alike. `DEFAULT` is one of
//! - `"text"`: the value as it would follow the flag, parsed like one (`Cli::literal_defaults`);
//! - `("description", function)`: computed at start; the description is what help shows;
//! - `none`: unset unless given, so the `Config` field is an `Option`.
//!
//! After `file only:` come the settings a config file gives and no flag does (tables such as
//! `[[headers]]`): `key: Type { [range: MIN..=MAX,] default: EXPR, reload: Live | Fixed }`,
//! where `EXPR` is the `Config` value when the file leaves the key out.
//!
//! From the rows the macro writes, one line per setting in each:
//! - `Cli`: the flags and the file's keys (clap and serde), every setting an `Option`;
//! - `Cli::over` (flags over the file) and `Cli::check_ranges` (the file's numbers);
//! - `Config`: the settings with their defaults applied (`Config::with_defaults`);
//! - `Config::reloaded`: the reload rule, live or fixed;
//! - `SETTINGS`: key, default, range and reload rule, for code and tests that go over
//!   every setting.

macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])+
        $key:ident: $ty:ty {
            flag: $value_name:literal,
            $(parser: $parser:expr,)?
            $(range: $range:expr,)?
            default: $default:tt,
            reload: $reload:ident $(,)?
        }
    )+
    file only:
    $(
        $(#[doc = $fdoc:literal])+
        $fkey:ident: $fty:ty {
            $(range: $frange:expr,)?
            default: $fdefault:expr,
            reload: $freload:ident $(,)?
        }
    )*) => {
        /// Self-healing, observable, multi-process static web server.
        ///
        /// Every setting can also come from `--config FILE` (TOML, the same keys in
        /// snake_case); a flag given on the command line wins over the file.
        #[derive(clap::Parser, Debug, Clone, Default, PartialEq, serde::Deserialize)]
        #[command(name = "webd", version, about, after_help = AFTER_HELP)]
        #[serde(deny_unknown_fields)]
        pub struct Cli {
            /// TOML file with the same keys (flags win).
            #[arg(long, value_name = "FILE")]
            #[serde(skip)]
            pub config: Option<PathBuf>,
            /// Validate the flags, the config file, its rules and the certificates as a start
            /// would, print a summary and exit 0 (2 on an error); starts, binds and writes nothing.
            #[arg(long)]
            #[serde(skip)]
            pub check_config: bool,
            $(
                #[arg(long, value_name = $value_name, help = help_text(&[$($doc),+], default_value!($default))
                    $(, value_parser = $parser)?
                    $(, value_parser = clap::builder::RangedU64ValueParser::<$ty>::new().range($range))?)]
                pub $key: Option<$ty>,
            )+
            $(
                #[arg(skip)]
                pub $fkey: Option<$fty>,
            )*
        }

        /// Validated settings shared by every process of one daemon.
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        pub struct Config {
            $(
                $(#[doc = $doc])+
                pub $key: config_type!($ty, $default),
            )+
            $(
                $(#[doc = $fdoc])+
                pub $fkey: $fty,
            )*
        }

        /// Every setting, in the order of the table.
        pub const SETTINGS: &[Setting] = &[$(
            Setting {
                key: stringify!($key),
                flag: true,
                default: default_value!($default),
                range: optional!($($range)?),
                reload: Reload::$reload,
            },
        )+ $(
            Setting {
                key: stringify!($fkey),
                flag: false,
                default: DefaultValue::Computed(stringify!($fdefault)),
                range: optional!($($frange)?),
                reload: Reload::$freload,
            },
        )*];

        impl Cli {
            /// These flags, with every setting they leave unset taken from `file`, and the
            /// keys both set to different values (the flag wins; a reload says so).
            fn over(self, file: Cli) -> (Cli, Vec<&'static str>) {
                let mut overridden = Vec::new();
                let cli = Cli {
                    config: self.config,
                    check_config: self.check_config,
                    $($key: match (self.$key, file.$key) {
                        (Some(flag), Some(file)) if flag != file => {
                            overridden.push(stringify!($key));
                            Some(flag)
                        }
                        (flag, file) => flag.or(file),
                    },)+
                    $($fkey: file.$fkey,)*
                };
                (cli, overridden)
            }

            /// The file's numbers checked against the ranges the flags are parsed with.
            fn check_ranges(&self) -> Result<(), String> {
                $($(check_range(stringify!($key), $range, self.$key.map(u64::from))?;)?)+
                $($(check_range(stringify!($fkey), $frange, self.$fkey.map(u64::from))?;)?)*
                Ok(())
            }
        }

        impl Config {
            /// The settings `cli` leaves unset, at their defaults; nothing checked yet.
            pub(crate) fn with_defaults(cli: Cli) -> Config {
                let literal = Cli::literal_defaults();
                Config {
                    $($key: apply_default!(cli.$key.or(literal.$key), $default),)+
                    $($fkey: cli.$fkey.unwrap_or_else(|| $fdefault),)*
                }
            }

            /// This running configuration with the live settings taken from `new`, and
            /// the keys of the fixed ones `new` would change (they keep their value).
            pub fn reloaded(&self, new: Config) -> (Config, Vec<&'static str>) {
                let mut kept = Vec::new();
                let config = Config {
                    $($key: reload_rule!($reload, self.$key, new.$key, stringify!($key), kept),)+
                    $($fkey: reload_rule!($freload, self.$fkey, new.$fkey, stringify!($fkey), kept),)*
                };
                (config, kept)
            }
        }
    };
}

macro_rules! default_value {
    (none) => {
        DefaultValue::Unset
    };
    (($description:literal, $compute:expr)) => {
        DefaultValue::Computed($description)
    };
    ($text:literal) => {
        DefaultValue::Flag($text)
    };
}

macro_rules! config_type {
    ($ty:ty, none) => { Option<$ty> };
    ($ty:ty, $default:tt) => { $ty };
}

macro_rules! apply_default {
    ($value:expr, none) => {
        $value
    };
    ($value:expr, ($description:literal, $compute:expr)) => {
        $value.unwrap_or_else($compute)
    };
    ($value:expr, $text:literal) => {
        $value.expect("Cli::literal_defaults sets every default given as a flag value")
    };
}

macro_rules! reload_rule {
    (Live, $running:expr, $new:expr, $key:expr, $kept:ident) => {
        $new
    };
    (Fixed, $running:expr, $new:expr, $key:expr, $kept:ident) => {{
        if $new != $running {
            $kept.push($key);
        }
        $running.clone()
    }};
}

macro_rules! optional {
    () => {
        None
    };
    ($value:expr) => {
        Some($value)
    };
}
