package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/chromedp/chromedp"
)

func main() {
	url := os.Args[1]
	base := url[:strings.Index(url, "?")]
	actx, cancel := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:], chromedp.NoSandbox, chromedp.WindowSize(1400, 1000))...)
	defer cancel()
	ctx, cancel2 := chromedp.NewContext(actx)
	defer cancel2()
	ctx, cancel3 := context.WithTimeout(ctx, 60*time.Second)
	defer cancel3()
	if err := chromedp.Do(ctx, chromedp.Navigate(url), chromedp.WaitVisible(chromedp.ID("cluster-id")), chromedp.Sleep(time.Second)); err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	for _, p := range []string{"", "nodes", "services", "events", "secrets", "services/" + os.Args[2]} {
		if err := chromedp.Do(ctx, chromedp.Navigate(base+"#/"+p), chromedp.Sleep(1500*time.Millisecond)); err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		buf, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		os.WriteFile("/tmp/dash/"+strings.ReplaceAll(p, "/", "_")+".png", buf, 0o644)
	}
}
