// Running a container's process: start, restart by restartPolicy with a capped backoff, the termination
// message, and ending every process of a pod.

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

type containerResult struct {
	exitCode int
}

// runContainer runs one container's process until it ends for good (restartPolicy) or the pod is deleted.
func (r *podRunner) runContainer(ctx context.Context, c preparedContainer, podStart metav1.Time) containerResult {
	restarts := int32(0)
	backoff := restartBackoff0
	var lastState corev1.ContainerState
	for {
		_ = os.WriteFile(c.termPath, nil, 0o644)
		logFile, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			r.logf("container %s: log file: %v", c.spec.Name, err)
			return containerResult{exitCode: 128}
		}
		cmd := exec.Command(c.binary, c.args...)
		cmd.Env = c.env
		cmd.Dir = r.dir
		cmd.Stdout, cmd.Stderr = logFile, logFile
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		started := metav1.Now()
		// Start under the lock that requestDelete takes: a process either starts before the pod is marked
		// deleting (and killAll sees it) or not at all.
		r.mu.Lock()
		if r.deleting {
			r.mu.Unlock()
			logFile.Close()
			return containerResult{exitCode: 0}
		}
		err = cmd.Start()
		if err == nil {
			r.procs[c.spec.Name] = cmd
			r.ready[c.spec.Name] = c.spec.ReadinessProbe == nil
		}
		r.mu.Unlock()
		if err != nil {
			logFile.Close()
			r.setContainerStatus(ctx, c.spec, corev1.ContainerStatus{Name: c.spec.Name, Image: c.spec.Image,
				State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 128,
					Reason: "StartError", Message: err.Error(), StartedAt: started, FinishedAt: metav1.Now()}}}, podStart)
			return containerResult{exitCode: 128}
		}
		containerID := fmt.Sprintf("local://%d", cmd.Process.Pid)
		r.logf("container %s started as pid %d on %s", c.spec.Name, cmd.Process.Pid, r.ip)
		running := func() corev1.ContainerStatus {
			r.mu.Lock()
			ready := r.ready[c.spec.Name]
			r.mu.Unlock()
			t := true
			return corev1.ContainerStatus{Name: c.spec.Name, Image: c.spec.Image, ImageID: "local://" + c.binary,
				ContainerID: containerID, Ready: ready, Started: &t, RestartCount: restarts, LastTerminationState: lastState,
				State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: started}}}
		}
		r.setContainerStatus(ctx, c.spec, running(), podStart)
		probeDone := make(chan struct{})
		if c.spec.ReadinessProbe != nil {
			go r.probeReadiness(ctx, c.spec, probeDone, func() { r.setContainerStatus(ctx, c.spec, running(), podStart) })
		}
		waitErr := cmd.Wait()
		close(probeDone)
		logFile.Close()
		r.mu.Lock()
		delete(r.procs, c.spec.Name)
		r.ready[c.spec.Name] = false
		r.mu.Unlock()

		exitCode := 0
		var exitErr *exec.ExitError
		if errors.As(waitErr, &exitErr) {
			if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				exitCode = 128 + int(ws.Signal())
			} else {
				exitCode = exitErr.ExitCode()
			}
		}
		term := &corev1.ContainerStateTerminated{ExitCode: int32(exitCode), Reason: "Completed",
			StartedAt: started, FinishedAt: metav1.Now(), ContainerID: containerID,
			Message: terminationMessage(c, exitCode)}
		if exitCode != 0 {
			term.Reason = "Error"
		}
		r.logf("container %s exited with code %d", c.spec.Name, exitCode)
		if ctx.Err() != nil {
			return containerResult{exitCode: exitCode}
		}
		status := corev1.ContainerStatus{Name: c.spec.Name, Image: c.spec.Image, ImageID: "local://" + c.binary,
			ContainerID: containerID, RestartCount: restarts, LastTerminationState: lastState,
			State: corev1.ContainerState{Terminated: term}}
		policy := r.pod.Spec.RestartPolicy
		again := !r.isDeleting() && (policy == corev1.RestartPolicyAlways ||
			(policy == corev1.RestartPolicyOnFailure && exitCode != 0))
		if !again {
			r.setContainerStatus(ctx, c.spec, status, podStart)
			return containerResult{exitCode: exitCode}
		}
		lastState = corev1.ContainerState{Terminated: term}
		status.LastTerminationState = lastState
		status.State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff",
			Message: fmt.Sprintf("back-off %s restarting failed container %s", backoff, c.spec.Name)}}
		r.setContainerStatus(ctx, c.spec, status, podStart)
		select {
		case <-ctx.Done():
			return containerResult{exitCode: exitCode}
		case <-r.deleted:
			return containerResult{exitCode: exitCode}
		case <-time.After(backoff):
		}
		restarts++
		backoff = min(backoff*2, restartBackoffMx)
	}
}

// terminationMessage reads what the process left at its terminationMessagePath, or the tail of its log when
// that is empty, the container failed and the policy says FallbackToLogsOnError.
func terminationMessage(c preparedContainer, exitCode int) string {
	msg, _ := readTail(c.termPath, maxTermMessage, false)
	if msg == "" && exitCode != 0 && c.spec.TerminationMessagePolicy == corev1.TerminationMessageFallbackToLogsOnError {
		msg, _ = readTail(c.logPath, fallbackLogBytes, true)
	}
	return msg
}

func readTail(path string, limit int64, tail bool) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return "", err
	}
	if tail && info.Size() > limit {
		if _, err := f.Seek(info.Size()-limit, io.SeekStart); err != nil {
			return "", err
		}
	}
	b, err := io.ReadAll(io.LimitReader(f, limit))
	return string(b), err
}

// killAll ends every process of the pod: SIGTERM to each process group, SIGKILL after the grace period.
func (r *podRunner) killAll(grace time.Duration) {
	r.mu.Lock()
	procs := make([]*exec.Cmd, 0, len(r.procs))
	for _, p := range r.procs {
		procs = append(procs, p)
	}
	r.mu.Unlock()
	for _, p := range procs {
		_ = syscall.Kill(-p.Process.Pid, syscall.SIGTERM)
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		r.mu.Lock()
		left := len(r.procs)
		r.mu.Unlock()
		if left == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, p := range procs {
		_ = syscall.Kill(-p.Process.Pid, syscall.SIGKILL)
	}
}
