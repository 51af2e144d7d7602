// Package layout holds the architecture test: the import rules of cabin's
// layout (README, "Layout"), checked against the packages as they are.
// It has no code of its own.
package layout
