//! HTTP/1 pieces shared by the workers and the admin endpoint: one table of status
//! codes, their reason phrases and built-in pages.

/// One table for reason phrases and built-in pages, so the two cannot disagree.
macro_rules! statuses {
    ($($code:literal => $reason:literal,)*) => {
        /// The reason phrase of `status` (empty for a code the table lacks).
        pub fn reason_phrase(status: u16) -> &'static str {
            match status {
                $($code => $reason,)*
                _ => "",
            }
        }

        /// The built-in HTML page for `status` (empty for a code the table lacks).
        pub fn error_page(status: u16) -> &'static [u8] {
            match status {
                $($code => concat!(
                    "<html><head><title>", $code, " ", $reason, "</title></head>",
                    "<body><h1>", $code, " ", $reason, "</h1></body></html>\n"
                ).as_bytes(),)*
                _ => b"",
            }
        }
    };
}

statuses! {
    200 => "OK",
    206 => "Partial Content",
    301 => "Moved Permanently",
    302 => "Found",
    304 => "Not Modified",
    307 => "Temporary Redirect",
    308 => "Permanent Redirect",
    400 => "Bad Request",
    403 => "Forbidden",
    404 => "Not Found",
    405 => "Method Not Allowed",
    408 => "Request Timeout",
    412 => "Precondition Failed",
    413 => "Content Too Large",
    414 => "URI Too Long",
    416 => "Range Not Satisfiable",
    431 => "Request Header Fields Too Large",
    500 => "Internal Server Error",
    501 => "Not Implemented",
    503 => "Service Unavailable",
    505 => "HTTP Version Not Supported",
}
