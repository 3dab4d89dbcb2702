//! [`Endpoint`]: a URL of the config, checked when it is read and kept as its text.

use std::{fmt, sync::Arc};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use url::Url;

/// A URL of the config, checked when it is read and kept as its text.
///
/// A stream's spec lives as long as the stream, and a [`Url`] keeps 64 bytes of offsets beside
/// its text: with three of them the spec took the allocator's 640-byte class, with these the
/// 384-byte one. Each use (a connect, a token request) parses the text again, once per
/// connection at most, which costs far less than a round trip. Shared (`Arc`): a clone (an
/// adapter's) costs no copy, and the streams of one config share equal endpoints.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Endpoint(Arc<str>);

impl Endpoint {
    /// Parses `text`; the text kept is the URL as [`Url`] writes it.
    pub fn parse(text: &str) -> Result<Self, url::ParseError> {
        Url::parse(text).map(Self::from)
    }

    /// The URL.
    pub fn url(&self) -> Url {
        // The text is what `Url` wrote after parsing it, which parses back to the same URL.
        Url::parse(&self.0).expect("an endpoint's text was written by Url")
    }

    /// The scheme, like `wss`.
    pub fn scheme(&self) -> &str {
        self.0.split_once(':').map_or("", |(scheme, _)| scheme)
    }

    /// The URL's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Endpoint {
    type Err = url::ParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl From<Url> for Endpoint {
    fn from(url: Url) -> Self {
        Self(String::from(url).into())
    }
}

impl From<Endpoint> for String {
    fn from(e: Endpoint) -> Self {
        e.0.to_string()
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Through `Url`'s own impl: its errors read as they did.
        Url::deserialize(d).map(Self::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_is_the_url_as_parsed_and_parses_back_to_it() {
        let e = Endpoint::parse("WSS://Gw.Example.com:443/streams/q?x=1").expect("url");
        assert_eq!(e.as_str(), "wss://gw.example.com/streams/q?x=1");
        assert_eq!(e.scheme(), "wss");
        assert_eq!(e.url(), Url::parse(e.as_str()).expect("url"));
        assert!(Endpoint::parse("not a url").is_err());
        let yaml: Endpoint = serde_yaml_ng::from_str("https://api.example.com").expect("yaml");
        assert_eq!(yaml.to_string(), "https://api.example.com/");
        assert_eq!(format!("{yaml:?}"), "\"https://api.example.com/\"");
    }
}
