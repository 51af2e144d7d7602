package execv1

// StartFailedTrailer is the trailer key an Exec call that could not start
// its process carries beside its error status: "127" when the command (or
// its working directory, or the user) was not found, "126" when it was
// found but cannot be run (not executable, a directory, not a program).
// They are the exit codes a shell and docker give those failures, and what
// cabin exec exits with; the status says what went wrong.
const StartFailedTrailer = "cabin-exec-start-failed"
