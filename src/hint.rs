//! What a person can do about an error. Every error of the library that can reach a person
//! offers its advice through this one trait, so the command line turns any of them into its
//! one error type the same way.

/// An error with advice on what to do about it.
pub trait Hint: std::fmt::Display {
    /// What to do about it, when there is something to say.
    fn hint(&self) -> Option<String>;
}
