package process

import "time"

// deadlinePast is a read deadline that has passed: set on a watched
// pidfd, it ends the watch.
var deadlinePast = time.Unix(1, 0)
