//! The resource DAG: resources as nodes, "must exist before" as edges.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use petgraph::algo::toposort;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;

use crate::resource::{Address, Resource};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GraphError {
    #[error("resource `{0}` is defined twice")]
    Duplicate(Address),
    #[error("resource `{from}` depends on `{to}`, which is not defined")]
    Dangling { from: Address, to: Address },
    #[error("resources depend on each other in a cycle through `{0}`")]
    Cycle(Address),
}

#[derive(Debug)]
pub struct ResourceGraph {
    graph: DiGraph<Resource, ()>,
    index: HashMap<Address, NodeIndex>,
    /// Node indices in dependency order, computed once when the graph is built.
    order: Vec<NodeIndex>,
    /// Resources someone else owns that resources refer to (a VPC and its subnets), by
    /// address, with their AWS ids: never created, changed or deleted.
    existing: BTreeMap<Address, String>,
}

impl ResourceGraph {
    /// Builds the graph, with an edge from each dependency to its dependent.
    pub fn build(resources: Vec<Resource>) -> Result<ResourceGraph, GraphError> {
        ResourceGraph::build_with_existing(resources, BTreeMap::new())
    }

    /// [`build`](Self::build), with resources someone else owns that others may refer to.
    pub fn build_with_existing(resources: Vec<Resource>, existing: BTreeMap<Address, String>) -> Result<ResourceGraph, GraphError> {
        let mut graph = DiGraph::with_capacity(resources.len(), resources.len() * 2);
        let mut index = HashMap::with_capacity(resources.len());
        for resource in resources {
            let address = resource.address.clone();
            let node = graph.add_node(resource);
            if index.insert(address.clone(), node).is_some() {
                return Err(GraphError::Duplicate(address));
            }
        }
        let mut edges = Vec::new();
        for node in graph.node_indices() {
            let resource = &graph[node];
            for dependency in resource.dependencies().filter(|d| !existing.contains_key(*d)) {
                let Some(&from) = index.get(dependency) else {
                    return Err(GraphError::Dangling { from: resource.address.clone(), to: dependency.clone() });
                };
                edges.push((from, node));
            }
        }
        edges.sort_unstable();
        edges.dedup();
        for (from, to) in edges {
            graph.add_edge(from, to, ());
        }
        let order = toposort(&graph, None).map_err(|cycle| GraphError::Cycle(graph[cycle.node_id()].address.clone()))?;
        Ok(ResourceGraph { graph, index, order, existing })
    }

    /// Resources someone else owns that the graph's resources refer to, with their ids.
    pub fn existing(&self) -> &BTreeMap<Address, String> {
        &self.existing
    }

    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }

    pub fn edge_count(&self) -> usize {
        self.graph.edge_count()
    }

    pub fn get(&self, address: &Address) -> Option<&Resource> {
        self.index.get(address).map(|&node| &self.graph[node])
    }

    /// Every resource, for changes that keep addresses and dependencies as they are.
    pub fn resources_mut(&mut self) -> impl Iterator<Item = &mut Resource> {
        self.graph.node_weights_mut()
    }

    /// Resources in an order where each comes after everything it depends on.
    pub fn in_dependency_order(&self) -> impl Iterator<Item = &Resource> {
        self.order.iter().map(|&node| &self.graph[node])
    }

    /// (dependency, dependent) pairs.
    pub fn edges(&self) -> impl Iterator<Item = (&Address, &Address)> {
        self.graph.edge_references().map(|e| (&self.graph[e.source()].address, &self.graph[e.target()].address))
    }

    /// Graphviz DOT, one cluster per resource kind so `dot` lays the layers out readably.
    pub fn to_dot(&self, title: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "digraph {} {{", quote(title));
        let _ = writeln!(out, "  rankdir=LR;\n  node [shape=box, fontname=\"Helvetica\", fontsize=10];");
        for resource in self.in_dependency_order() {
            let _ = writeln!(
                out,
                "  {} [label=\"{}\\n{}\"];",
                quote(resource.address.as_str()),
                escape(resource.address.as_str()),
                escape(&resource.name)
            );
        }
        let mut edges: Vec<_> = self.edges().collect();
        edges.sort();
        for (from, to) in edges {
            let _ = writeln!(out, "  {} -> {};", quote(from.as_str()), quote(to.as_str()));
        }
        out.push_str("}\n");
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        let mut edges: Vec<_> = self.edges().map(|(from, to)| serde_json::json!({"from": from, "to": to})).collect();
        edges.sort_by_key(|e| e.to_string());
        serde_json::json!({
            "resources": self.in_dependency_order().collect::<Vec<_>>(),
            "edges": edges,
        })
    }
}

fn quote(text: &str) -> String {
    format!("\"{}\"", escape(text))
}

fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{InternetGatewaySpec, Kind, Spec, VpcSpec};

    #[test]
    fn dependencies_come_first_and_dangling_references_are_caught() {
        let vpc = Resource::new(Kind::Vpc, "main", Spec::Vpc(VpcSpec { cidr: "10.0.0.0/16".parse().unwrap() }));
        let igw = Resource::new(Kind::InternetGateway, "main", Spec::InternetGateway(InternetGatewaySpec { vpc: vpc.address.clone() }));
        let graph = ResourceGraph::build(vec![igw.clone(), vpc]).unwrap();
        let order: Vec<&str> = graph.in_dependency_order().map(|r| r.address.as_str()).collect();
        assert_eq!(order, ["vpc.main", "internet_gateway.main"]);
        assert_eq!(
            ResourceGraph::build(vec![igw]).unwrap_err(),
            GraphError::Dangling { from: Address::new(Kind::InternetGateway, "main"), to: Address::new(Kind::Vpc, "main") }
        );
    }
}
