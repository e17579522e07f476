//! The two shapes of a loop's dynamic tokens, taken from the token space above its fixed
//! sources' (see [`super::EventLoop`]).

use mio::Token;

/// Tokens for processes' channels, each used once: a late event for a process gone
/// never reaches its successor.
#[derive(Debug)]
pub struct Tokens(usize);

impl Tokens {
    pub(super) const fn starting_at(first: usize) -> Tokens {
        Tokens(first)
    }

    pub fn allocate(&mut self) -> Token {
        self.0 += 1;
        Token(self.0 - 1)
    }
}

/// One token per index of a [`super::Slab`]: an index's token is reused with the index,
/// and turning a token back into its index is one subtraction (the worker's hot path).
#[derive(Debug, Clone, Copy)]
pub struct IndexTokens {
    first: usize,
}

impl IndexTokens {
    pub(super) const fn starting_at(first: usize) -> IndexTokens {
        IndexTokens { first }
    }

    #[inline]
    pub fn token(self, index: usize) -> Token {
        Token(self.first + index)
    }

    /// The index of `token`; `None` for a fixed source's token.
    #[inline]
    pub fn index(self, token: Token) -> Option<usize> {
        token.0.checked_sub(self.first)
    }
}
