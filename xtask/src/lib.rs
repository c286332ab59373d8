//! What the project's tasks share with its tests: the machine set-up and the image build.

pub mod image;
pub mod setup;
