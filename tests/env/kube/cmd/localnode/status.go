// Pod status as a kubelet reports it: container statuses, phase and conditions.

package main

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
)

func (r *podRunner) setStatus(ctx context.Context, mutate func(*corev1.PodStatus)) {
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		pod, err := r.agent.client.CoreV1().Pods(r.pod.Namespace).Get(ctx, r.pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if pod.UID != r.pod.UID {
			return nil
		}
		mutate(&pod.Status)
		updated, err := r.agent.client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
		if err == nil {
			r.mu.Lock()
			r.pod.Status = updated.Status
			r.mu.Unlock()
		}
		return err
	})
	if err != nil && !apierrors.IsNotFound(err) && ctx.Err() == nil {
		r.logf("updating status: %v", err)
	}
}

func (r *podRunner) setContainerStatus(ctx context.Context, c corev1.Container, cs corev1.ContainerStatus, podStart metav1.Time) {
	r.setStatus(ctx, func(s *corev1.PodStatus) {
		s.HostIP, s.PodIP = "127.0.0.1", r.ip
		s.HostIPs = []corev1.HostIP{{IP: "127.0.0.1"}}
		s.PodIPs = []corev1.PodIP{{IP: r.ip}}
		if s.StartTime == nil {
			s.StartTime = &podStart
		}
		if len(s.ContainerStatuses) != len(r.pod.Spec.Containers) {
			s.ContainerStatuses = waitingStatuses(r.pod, "ContainerCreating", "")
		}
		for i := range s.ContainerStatuses {
			if s.ContainerStatuses[i].Name == c.Name {
				s.ContainerStatuses[i] = cs
			}
		}
		allReady, anyRunning := true, false
		for _, st := range s.ContainerStatuses {
			allReady = allReady && st.Ready
			anyRunning = anyRunning || st.State.Running != nil || st.State.Waiting != nil && st.State.Waiting.Reason == "CrashLoopBackOff"
		}
		if anyRunning {
			s.Phase = corev1.PodRunning
		}
		s.Conditions = podConditions(s.Conditions, true, allReady)
	})
}

func waitingStatuses(pod *corev1.Pod, reason, message string) []corev1.ContainerStatus {
	out := make([]corev1.ContainerStatus, 0, len(pod.Spec.Containers))
	for _, c := range pod.Spec.Containers {
		out = append(out, corev1.ContainerStatus{Name: c.Name, Image: c.Image,
			State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: message}}})
	}
	return out
}

func podConditions(old []corev1.PodCondition, initialized, ready bool) []corev1.PodCondition {
	now := metav1.Now()
	status := func(b bool) corev1.ConditionStatus {
		if b {
			return corev1.ConditionTrue
		}
		return corev1.ConditionFalse
	}
	want := map[corev1.PodConditionType]corev1.ConditionStatus{
		corev1.PodScheduled:    corev1.ConditionTrue,
		corev1.PodInitialized:  status(initialized),
		corev1.ContainersReady: status(ready),
		corev1.PodReady:        status(ready),
	}
	var out []corev1.PodCondition
	for _, t := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
		c := corev1.PodCondition{Type: t, Status: want[t], LastTransitionTime: now}
		for _, o := range old {
			if o.Type == t && o.Status == want[t] {
				c.LastTransitionTime = o.LastTransitionTime
			}
		}
		out = append(out, c)
	}
	return out
}
