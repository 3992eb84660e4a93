// HTTP readiness probes, which drive the Ready condition.

package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func (r *podRunner) probeReadiness(ctx context.Context, c corev1.Container, done <-chan struct{}, changed func()) {
	p := c.ReadinessProbe
	if p.HTTPGet == nil {
		r.logf("container %s: only httpGet readiness probes run here; treating it as ready", c.Name)
		r.mu.Lock()
		r.ready[c.Name] = true
		r.mu.Unlock()
		changed()
		return
	}
	port := p.HTTPGet.Port.IntValue()
	if p.HTTPGet.Port.Type == intstr.String {
		for _, cp := range c.Ports {
			if cp.Name == p.HTTPGet.Port.StrVal {
				port = int(cp.ContainerPort)
			}
		}
	}
	host := p.HTTPGet.Host
	if host == "" {
		host = r.ip
	}
	scheme := strings.ToLower(string(p.HTTPGet.Scheme))
	if scheme == "" {
		scheme = "http"
	}
	url := fmt.Sprintf("%s://%s%s", scheme, net.JoinHostPort(host, strconv.Itoa(port)), p.HTTPGet.Path)
	period := time.Duration(max(p.PeriodSeconds, 1)) * time.Second
	timeout := time.Duration(max(p.TimeoutSeconds, 1)) * time.Second
	success, failure := max(p.SuccessThreshold, 1), max(p.FailureThreshold, 1)
	client := &http.Client{Timeout: timeout}
	select {
	case <-done:
		return
	case <-time.After(time.Duration(p.InitialDelaySeconds) * time.Second):
	}
	var okRun, failRun int32
	for {
		ok := false
		if resp, err := client.Get(url); err == nil {
			ok = resp.StatusCode >= 200 && resp.StatusCode < 400
			resp.Body.Close()
		}
		if ok {
			okRun, failRun = okRun+1, 0
		} else {
			okRun, failRun = 0, failRun+1
		}
		r.mu.Lock()
		was := r.ready[c.Name]
		now := was
		if okRun >= success {
			now = true
		} else if failRun >= failure {
			now = false
		}
		r.ready[c.Name] = now
		r.mu.Unlock()
		if now != was {
			changed()
		}
		select {
		case <-done:
			return
		case <-ctx.Done():
			return
		case <-time.After(period):
		}
	}
}
