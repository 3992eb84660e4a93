// The Node this agent registers, and its Lease and status kept fresh.

package main

import (
	"context"
	"log"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
)

func (a *agent) registerNode(ctx context.Context) error {
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: a.node, Labels: map[string]string{
			"kubernetes.io/hostname": a.node, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
			"sluice.dev/local-node": "true",
		}},
	}
	_, err := a.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return a.updateNodeStatus(ctx)
}

func (a *agent) updateNodeStatus(ctx context.Context) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		node, err := a.client.CoreV1().Nodes().Get(ctx, a.node, metav1.GetOptions{})
		if err != nil {
			return err
		}
		now := metav1.Now()
		capacity := corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse("2"),
			corev1.ResourceMemory: resource.MustParse("24Gi"),
			corev1.ResourcePods:   resource.MustParse("110"),
		}
		node.Status.Capacity = capacity
		node.Status.Allocatable = capacity
		node.Status.Addresses = []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: "127.0.0.1"}, {Type: corev1.NodeHostName, Address: a.node},
		}
		node.Status.NodeInfo = corev1.NodeSystemInfo{
			KubeletVersion: "v1.36.3-sluice-localnode", OperatingSystem: "linux", Architecture: "amd64",
			OSImage: "sluice local node (pods are local processes)", ContainerRuntimeVersion: "local://1",
		}
		cond := func(t corev1.NodeConditionType, s corev1.ConditionStatus, reason, msg string) corev1.NodeCondition {
			c := corev1.NodeCondition{Type: t, Status: s, Reason: reason, Message: msg,
				LastHeartbeatTime: now, LastTransitionTime: now}
			for _, old := range node.Status.Conditions {
				if old.Type == t && old.Status == s {
					c.LastTransitionTime = old.LastTransitionTime
				}
			}
			return c
		}
		node.Status.Conditions = []corev1.NodeCondition{
			cond(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady", "local node agent is posting ready status"),
			cond(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory", ""),
			cond(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure", ""),
			cond(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID", ""),
		}
		_, err = a.client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
		return err
	})
}

// keepNodeAlive renews the node Lease (what the node lifecycle controller watches) and refreshes the status.
func (a *agent) keepNodeAlive(ctx context.Context) {
	seconds := int32(leaseDuration / time.Second)
	tick := time.NewTicker(heartbeat)
	defer tick.Stop()
	for n := 0; ; n++ {
		leases := a.client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
		now := metav1.NewMicroTime(time.Now())
		lease, err := leases.Get(ctx, a.node, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			_, err = leases.Create(ctx, &coordinationv1.Lease{
				ObjectMeta: metav1.ObjectMeta{Name: a.node, Namespace: corev1.NamespaceNodeLease},
				Spec: coordinationv1.LeaseSpec{HolderIdentity: &a.node, LeaseDurationSeconds: &seconds,
					RenewTime: &now},
			}, metav1.CreateOptions{})
		case err == nil:
			lease.Spec.RenewTime = &now
			lease.Spec.HolderIdentity = &a.node
			lease.Spec.LeaseDurationSeconds = &seconds
			_, err = leases.Update(ctx, lease, metav1.UpdateOptions{})
		}
		if err != nil && ctx.Err() == nil {
			log.Printf("renewing node lease: %v", err)
		}
		if n%6 == 5 {
			if err := a.updateNodeStatus(ctx); err != nil && ctx.Err() == nil {
				log.Printf("updating node status: %v", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
